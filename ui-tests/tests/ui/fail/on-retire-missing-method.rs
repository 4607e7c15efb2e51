use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1, on_retire = stop_timers)]
impl Game {
    pub fn score(&self) -> i64 {
        self.score
    }

    fn stop_timer(&mut self) {}
}

fn main() {}
