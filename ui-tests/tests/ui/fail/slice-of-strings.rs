use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn names(&mut self, names: &[String]) {
        self.score += names.len() as i64;
    }
}

fn main() {}
