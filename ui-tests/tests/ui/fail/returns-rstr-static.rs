use abi_stable::std_types::RStr;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn name(&self) -> RStr<'static> {
        RStr::from_str("game")
    }
}

fn main() {}
