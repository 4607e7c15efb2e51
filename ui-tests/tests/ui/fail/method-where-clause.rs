use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn score(&self) -> i64
    where
        i64: Copy,
    {
        self.score
    }
}

fn main() {}
