use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[derive(Serialize, Deserialize)]
pub struct GameV1 {
    points: i64,
}

#[derive(Serialize, Deserialize)]
pub struct GameV2 {
    points: i64,
    lives: u8,
}

#[hotreload::hot_module(version = 1, state_version = 3)]
impl Game {
    #[migrate(from = 1)]
    fn from_v1(old: GameV1) -> GameV2 {
        GameV2 { points: old.points, lives: 3 }
    }

    pub fn score(&self) -> i64 {
        self.score
    }
}

fn main() {}
