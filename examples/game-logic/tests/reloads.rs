//! Does this crate, as it is now, hot-reload into a game running the build of the main
//! branch? Both are built, and the new one is reloaded into the old one for real.

use game_logic::GameLogic;
use hotreload::check::Compare;
use hotreload::hot_fn;

#[test]
fn this_change_reloads_into_the_running_game() {
    // The crate as it is, against its build at the merge base with the main branch.
    let builds = Compare::crate_at(env!("CARGO_MANIFEST_DIR"))
        .build()
        .unwrap();
    for (module, checked) in builds.check().unwrap() {
        println!("{module}: {}", checked.verdict);
        checked.assert_reloads();
    }

    // A game in progress keeps its entities and its score across the reload.
    let reloaded = builds
        .reload::<GameLogic>(|game| {
            hot_fn!(game.spawn(2.0))?;
            hot_fn!(game.tick(0.5))?;
            Ok(())
        })
        .unwrap();
    reloaded.assert_reloaded();
    let after = hot_fn!(reloaded.module.summary()).unwrap();
    assert_eq!((after.tick, after.entities), (1, 1));

    // Back and forth ten times with the game running: every tick made is counted, whichever
    // build made it.
    let made = std::cell::Cell::new(0);
    builds
        .back_and_forth::<GameLogic>(
            10,
            |game| {
                made.set(made.get() + 1);
                hot_fn!(game.tick(0.5)).map(drop)
            },
            |game| {
                let counted = hot_fn!(game.summary()).map_err(|err| err.to_string())?.tick;
                if counted == made.get() {
                    Ok(())
                } else {
                    Err(format!("{counted} ticks counted, {} made", made.get()))
                }
            },
        )
        .unwrap();
}
