use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1, on_retire = stop)]
impl Game {
    pub fn score(&self) -> i64 {
        self.score
    }

    fn stop(&self) -> bool {
        true
    }
}

fn main() {}
