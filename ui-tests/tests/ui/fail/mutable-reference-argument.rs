use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn fill(&self, out: &mut Vec<u8>) {
        out.push(self.score as u8);
    }
}

fn main() {}
