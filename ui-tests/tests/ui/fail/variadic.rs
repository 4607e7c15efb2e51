use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn log(&self, format: u8, args: ...) {
        let _ = format;
    }
}

fn main() {}
