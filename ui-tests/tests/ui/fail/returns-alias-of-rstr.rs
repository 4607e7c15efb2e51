use abi_stable::std_types::RStr;
use serde::{Deserialize, Serialize};

pub type Name = RStr<'static>;

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn name(&self) -> Name {
        RStr::from_str("game")
    }
}

fn main() {}
