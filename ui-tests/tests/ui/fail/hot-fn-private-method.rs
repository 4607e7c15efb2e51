use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Game {
    score: i64,
}

#[hotreload::hot_module(version = 1)]
impl Game {
    pub fn tick(&mut self, dt: f32) -> i64 {
        self.score += self.step(dt);
        self.score
    }

    fn step(&self, dt: f32) -> i64 {
        dt as i64
    }
}

fn call(game: &hotreload::Module<Game>) {
    let _ = hotreload::hot_fn!(game.step(0.016));
}

fn main() {}
