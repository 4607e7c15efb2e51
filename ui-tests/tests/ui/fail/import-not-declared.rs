use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Physics {
    steps: u64,
}

#[hotreload::hot_module(version = 1)]
impl Physics {
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

#[derive(Default, Serialize, Deserialize)]
pub struct Render {
    frames: u64,
}

#[hotreload::hot_module(version = 1)]
impl Render {
    pub fn frames(&self) -> u64 {
        self.frames
    }
}

#[derive(Default, Serialize, Deserialize)]
pub struct Ai {
    thoughts: u64,
}

#[hotreload::hot_module(version = 1, uses = [Physics])]
impl Ai {
    pub fn think(&mut self) -> u64 {
        // `Render` is not in `uses`: the module may not call it.
        let frames = hotreload::hot_fn!(Self::import::<Render>().frames()).unwrap_or(0);
        self.thoughts += frames;
        self.thoughts
    }
}

fn main() {}
