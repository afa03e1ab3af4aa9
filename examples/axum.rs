//! The design note's storage endpoints in axum, made safe for concurrent clients by one layer.
//!
//! ```not_rust
//! cargo run --example axum
//! curl -i http://127.0.0.1:3000/api/storage
//! ```

use std::sync::{Arc, Mutex};

use axum::{body::Bytes, extract::State, routing::get, Router};
use tower_conditional::ConditionalLayer;

/// One document and no concurrency control: without the layer, concurrent saves lose updates.
#[derive(Clone, Default)]
struct Storage(Arc<Mutex<Bytes>>);

async fn read(State(storage): State<Storage>) -> Bytes {
    storage.0.lock().unwrap().clone()
}

async fn write(State(storage): State<Storage>, body: Bytes) -> &'static str {
    *storage.0.lock().unwrap() = body;
    "saved\n"
}

fn app() -> Router {
    Router::new()
        .route("/api/storage", get(read).post(write))
        .with_state(Storage::default())
        // `route_layer` leaves unmatched paths (404) alone; `layer` would version them too.
        .route_layer(ConditionalLayer::new())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app()).await
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http::{header, StatusCode};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_save_based_on_an_old_version_is_refused() {
        let app = app();
        let save = Request::post("/api/storage")
            .body(Body::from("v1"))
            .unwrap();
        let res = app.clone().oneshot(save).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().contains_key(header::LAST_MODIFIED));

        let stale = Request::post("/api/storage")
            .header(header::IF_UNMODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT")
            .body(Body::from("v0"))
            .unwrap();
        let res = app.oneshot(stale).await.unwrap();
        assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    }
}
