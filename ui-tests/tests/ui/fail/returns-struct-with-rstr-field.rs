use abi_stable::StableAbi;
use abi_stable::std_types::RStr;
use hotreload::Rehome;
use serde::{Deserialize, Serialize};

#[repr(C)]
#[derive(StableAbi, Rehome)]
pub struct Label {
    pub text: RStr<'static>,
    pub size: u32,
}

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn label(&self) -> Label {
        Label {
            text: RStr::from_str("score"),
            size: 12,
        }
    }
}

fn main() {}
