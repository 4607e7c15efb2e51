use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn rename(&mut self, name: std::sync::Arc<String>) {
        let _ = name;
    }
}

fn main() {}
