//! The HTTP side: axum routes that call the `storefront` module through `hot_fn!`, and the
//! admin routes that show and reload it.
//!
//! A module error (`Err` from a method) or a [`hotreload::HotError`] (the module not loaded
//! yet, a panic contained in the module) becomes a 500 with the message as its body.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hotreload::{HotError, HotReloader, Module, Pick, hot_fn};
use serde::Deserialize;
use storefront::Storefront;

/// The module's name, as the reloader knows it.
pub const MODULE: &str = "storefront";

/// What every handler reaches: the reloader and the module's handle.
#[derive(Clone)]
pub struct App {
    /// The reloader the module is registered with.
    pub reloader: Arc<HotReloader>,
    /// The module.
    pub store: Module<Storefront>,
}

/// The service's routes.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(catalog))
        .route("/price/{sku}", get(price))
        .route("/stats", get(stats))
        .route("/admin/status", get(status))
        .route("/admin/reload", post(reload))
        .merge(crate::canary::routes())
        .with_state(app)
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Deserialize)]
struct PriceQuery {
    user: Option<String>,
}

/// `GET /price/{sku}?user=<id>`: the product's price for that user, as JSON.
async fn price(
    State(app): State<App>,
    Path(sku): Path<String>,
    Query(query): Query<PriceQuery>,
) -> Response {
    let user = query.user.unwrap_or_else(|| "guest".to_owned());
    if !is_plain_id(&user) || !is_plain_id(&sku) {
        return (
            StatusCode::BAD_REQUEST,
            "user and product ids are 1 to 64 of a-z, 0-9, '-' and '_'\n",
        )
            .into_response();
    }
    let store = &app.store;
    // Keyed by the user: under a canary that takes a share of the users, each user sees one
    // version throughout; under a share of the calls, a key is drawn like any call.
    match hot_fn!(store.route(Pick::key(&user)).price(&user, &sku)) {
        Ok(Ok(Some(json))) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, format!("no product `{sku}`\n")).into_response(),
        Ok(Err(module_error)) => module_failed(module_error),
        Err(err) => call_failed(err),
    }
}

/// `GET /`: the catalog as a text page.
async fn catalog(State(app): State<App>) -> Response {
    let store = &app.store;
    match hot_fn!(store.catalog()) {
        Ok(page) => page.into_response(),
        Err(err) => call_failed(err),
    }
}

/// `GET /stats`: the module's counters, carried across reloads, as JSON.
async fn stats(State(app): State<App>) -> Response {
    let store = &app.store;
    match hot_fn!(store.stats()) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(err) => call_failed(err),
    }
}

/// `GET /admin/status`: `reloader.status()`, as the terminal shows it.
async fn status(State(app): State<App>) -> Response {
    match app.reloader.status() {
        Ok(status) => status.to_string().into_response(),
        Err(err) => call_failed(err),
    }
}

/// `POST /admin/reload`: reloads the module from its artifact now. A refused build is a 409
/// with the reason; the serving version goes on.
async fn reload(State(app): State<App>) -> Response {
    let reloader = app.reloader.clone();
    let outcome = tokio::task::spawn_blocking(move || reloader.reload_module(MODULE)).await;
    match outcome {
        Ok(Ok(report)) if report.unchanged => "unchanged: the artifact is the serving build\n"
            .to_owned()
            .into_response(),
        Ok(Ok(report)) => format!("reloaded {report}\n").into_response(),
        Ok(Err(err)) => (StatusCode::CONFLICT, format!("refused: {err}\n")).into_response(),
        Err(join) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the reload did not finish: {join}\n"),
        )
            .into_response(),
    }
}

/// A method's own `Err`: a 500 with its message.
fn module_failed(message: String) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")).into_response()
}

/// The call did not run or did not return (not loaded, a contained panic…): a 500.
pub fn call_failed(err: HotError) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response()
}

/// 1 to 64 of `a-z`, `0-9`, `-` and `_`: what the pages may echo without escaping.
fn is_plain_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
