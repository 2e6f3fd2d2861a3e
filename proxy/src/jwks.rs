//! Fetching JWKS documents for jwt filters: from a file, or over HTTP(S).
//! (The jwt filter itself never touches files or sockets.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kaname_config::JwksSource;
use kaname_filters::JwksFetcher;

pub fn fetcher(source: &JwksSource) -> Arc<dyn JwksFetcher> {
    match source {
        JwksSource::File(path) => Arc::new(FileFetcher(path.clone())),
        JwksSource::Url { url, .. } => Arc::new(UnsupportedFetcher(url.clone())),
    }
}

struct FileFetcher(String);

impl JwksFetcher for FileFetcher {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + '_>> {
        Box::pin(async move {
            tokio::fs::read(&self.0)
                .await
                .map(Bytes::from)
                .map_err(|e| format!("cannot read JWKS file {}: {e}", self.0))
        })
    }
}

struct UnsupportedFetcher(String);

impl JwksFetcher for UnsupportedFetcher {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + '_>> {
        Box::pin(async move {
            Err(format!(
                "fetching JWKS from {} is not implemented yet",
                self.0
            ))
        })
    }
}
