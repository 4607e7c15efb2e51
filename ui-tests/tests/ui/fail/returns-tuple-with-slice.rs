use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    bytes: Vec<u8>,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn bytes(&self) -> (u8, &[u8]) {
        (0, &self.bytes)
    }
}

fn main() {}
