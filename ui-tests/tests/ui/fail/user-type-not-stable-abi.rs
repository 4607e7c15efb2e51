use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

pub struct Point {
    pub x: f32,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn place(&mut self, at: Point) {
        self.score += at.x as i64;
    }
}

fn main() {}
