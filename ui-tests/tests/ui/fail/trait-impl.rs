use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Clone for Game {
    fn clone(&self) -> Self {
        Game { score: self.score }
    }
}

fn main() {}
