//! `cluster.md` N7: another layer's routes on the node's admin port — behind the
//! node's admin authentication unless declared public, and never shadowing the
//! node's own routes.

use std::time::Duration;

use axum::http::Method;
use axum::routing::get;
use kv_node::{AdminExtension, Node, NodeConfig};
use testkit::http;
use tokio::net::TcpListener;

const PW: &str = "s3cret";

#[tokio::test]
async fn extension_routes_are_authenticated_unless_public_and_never_shadow_the_node(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = NodeConfig::ephemeral(dir.path(), "admin", PW);
    cfg.admin_extension = Some(AdminExtension {
        router: axum::Router::new()
            .route("/pools", get(|| async { "pools" }))
            .route("/agent/v1/info", get(|| async { "info" }))
            .route("/health", get(|| async { "shadowed" })),
        public: vec![(Method::GET, "/pools".to_string())],
    });
    let kv = TcpListener::bind("127.0.0.1:0").await?;
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    let node = tokio::time::timeout(
        Duration::from_secs(20),
        Node::start_with_listeners(cfg, kv, admin),
    )
    .await??;
    let a = node.admin_addr();
    let creds = Some(("admin", PW));
    assert_eq!(
        http(a, "GET", "/pools", None, None).await?,
        (200, "pools".into())
    );
    assert_eq!(http(a, "GET", "/agent/v1/info", None, None).await?.0, 401);
    assert_eq!(
        http(a, "GET", "/agent/v1/info", Some(("admin", "wrong")), None)
            .await?
            .0,
        401
    );
    assert_eq!(
        http(a, "GET", "/agent/v1/info", creds, None).await?,
        (200, "info".into())
    );
    // Public means exactly that method and path.
    assert_eq!(http(a, "POST", "/pools", None, None).await?.0, 401);
    // The node's own route wins.
    let (status, body) = http(a, "GET", "/health", None, None).await?;
    assert_eq!(status, 200);
    assert!(body.contains("ok"), "{body}");
    // Unknown paths are still 404 for an authenticated caller.
    assert_eq!(http(a, "GET", "/nope", creds, None).await?.0, 404);
    node.shutdown().await;
    Ok(())
}
