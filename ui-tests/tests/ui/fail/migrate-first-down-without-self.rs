use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[derive(Serialize, Deserialize)]
pub struct GameV1 {
    points: i64,
}

#[hotreload::hot_module(version = 1, state_version = 2)]
impl Game {
    #[migrate(to = 1)]
    fn to_v1(newer: Game) -> GameV1 {
        GameV1 { points: newer.score }
    }

    #[migrate(from = 3)]
    fn from_the_future(old: GameV1) -> Game {
        Game { score: old.points }
    }

    pub fn score(&self) -> i64 {
        self.score
    }
}

fn main() {}
