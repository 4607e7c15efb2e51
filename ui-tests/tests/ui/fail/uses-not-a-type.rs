use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Ai {
    thoughts: u64,
}

#[hotreload::hot_module(version = 1, uses = ["physics"])]
impl Ai {
    pub fn thoughts(&self) -> u64 {
        self.thoughts
    }
}

fn main() {}
