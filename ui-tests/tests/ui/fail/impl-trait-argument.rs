use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn add(&mut self, n: impl Into<i64>) {
        self.score += n.into();
    }
}

fn main() {}
