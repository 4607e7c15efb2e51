//! Does this crate, as it is now, hot-reload into a game running the build of the main
//! branch? Both are built, and the new one is reloaded into the old one for real.

use game_logic::GameLogic;
use hotreload::check::Compare;
use hotreload::{HotError, hot_fn};

#[test]
fn this_change_reloads_into_the_running_game() {
    // The crate as it is, against its build at the merge base with the main branch.
    let builds = Compare::crate_at(env!("CARGO_MANIFEST_DIR"))
        .build()
        .unwrap();
    let checked = builds.check().unwrap();
    assert!(!checked.is_empty(), "the library exports no hot module");
    for (module, checked) in checked {
        println!("{module}: {}", checked.verdict);
        checked.assert_reloads();
    }

    // A game in progress keeps its entities and its score across the reload. (Driving the
    // base build takes this test's API: a change that adds a method or bumps the API version
    // was judged above, and is not driven.)
    let drive = |game: &hotreload::Module<GameLogic>| {
        hot_fn!(game.spawn(2.0))?;
        hot_fn!(game.tick(0.5))?;
        Ok(())
    };
    let reloaded = match builds.reload::<GameLogic>(drive) {
        Ok(reloaded) => reloaded,
        Err(HotError::Rejected { reason, .. }) => {
            println!("the base build has another API ({reason}): not driven");
            return;
        }
        Err(err) => panic!("{err}"),
    };
    reloaded.assert_reloaded();
    println!(
        "state: {:?}; resident memory +{} kB",
        reloaded.state, reloaded.resident_growth_kb
    );
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
