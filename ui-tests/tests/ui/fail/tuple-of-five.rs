use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn five(&mut self, t: (u8, u8, u8, u8, u8)) {
        self.score += i64::from(t.0);
    }
}

fn main() {}
