//! The STEP operations the routes call, each one exchange on a session of
//! its own (see [`Backend::call`]).

use std::net::IpAddr;

use serde_json::{Map, Value};
use step_core::Problem;
use step_core::client::{Capabilities, ClientError, DownloadPlan, FilePage, ListQuery, StepClient};
use tracing::{debug, warn};

use super::Backend;
use crate::error::GatewayError;

impl Backend {
    /// Run `op` on a session carrying `token` (which goes back where it
    /// came from whatever happened); its error as the gateway's.
    pub async fn call<T>(
        &self,
        token: &str,
        op: impl AsyncFnOnce(&mut StepClient) -> Result<T, ClientError>,
    ) -> Result<T, GatewayError> {
        let mut session = self.conn(token).await?;
        op(&mut session).await.map_err(|e| self.step_error(e))
    }

    /// LOGIN; returns the token.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<String, GatewayError> {
        self.login_caps(username, password, client)
            .await
            .map(|(t, _)| t)
    }

    /// LOGIN; returns the token and what the server announced with it.
    pub async fn login_caps(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<(String, Capabilities), GatewayError> {
        let mut c = self.login_session(client).await?;
        let token = c
            .login(username, password)
            .await
            .map_err(|e| self.step_error(e))?;
        let caps = c.capabilities();
        self.shared.learn(caps);
        Ok((token, caps))
    }

    pub async fn data_save(
        &self,
        token: &str,
        key: Option<String>,
        record: Map<String, Value>,
    ) -> Result<String, GatewayError> {
        self.call(token, async |c| c.data_save(key.as_deref(), record).await)
            .await
    }

    pub async fn data_get(
        &self,
        token: &str,
        key: String,
    ) -> Result<Map<String, Value>, GatewayError> {
        self.call(token, async |c| c.data_get(&key).await).await
    }

    pub async fn data_delete(&self, token: &str, key: String) -> Result<(), GatewayError> {
        self.call(token, async |c| c.data_delete(&key).await).await
    }

    pub async fn file_get(
        &self,
        token: &str,
        key: String,
        block_size: Option<u64>,
    ) -> Result<DownloadPlan, GatewayError> {
        self.call(token, async |c| c.file_get(&key, block_size).await)
            .await
    }

    /// One page of the caller's files (FILE LIST); 501 when the backend
    /// does not announce the extension (the reference server).
    pub async fn file_list(
        &self,
        token: &str,
        prefix: String,
        after: Option<String>,
        limit: u64,
    ) -> Result<FilePage, GatewayError> {
        let mut conn = self.conn(token).await?;
        if !conn.capabilities().list {
            return Err(GatewayError::NotImplemented(
                "the STEP backend does not list files (no \"list\" capability)".into(),
            ));
        }
        let query = ListQuery {
            prefix: &prefix,
            after: after.as_deref(),
            limit: Some(limit),
        };
        conn.file_list(query).await.map_err(|e| self.step_error(e))
    }

    /// FILE DELETE only while the file's md5 is `md5`: atomic (412 when it
    /// changed) against a server with the `replace` extension; a server
    /// without it ignores the condition (the caller checked it just before).
    pub async fn file_delete_if(
        &self,
        token: &str,
        key: String,
        md5: String,
    ) -> Result<(), GatewayError> {
        self.call(token, async |c| c.file_delete_if(&key, &md5).await)
            .await
    }

    /// The file under `key` as a download plan, or `None` when there is
    /// none (to evaluate a write's preconditions).
    pub async fn file_current(
        &self,
        token: &str,
        key: String,
    ) -> Result<Option<DownloadPlan>, GatewayError> {
        match self.file_get(token, key, None).await {
            Ok(plan) => Ok(Some(plan)),
            Err(GatewayError::Step {
                problem: Problem::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn file_delete(&self, token: &str, key: String) -> Result<(), GatewayError> {
        self.call(token, async |c| c.file_delete(&key).await).await
    }

    /// Remove this request's own upload of `key` after it failed: only the
    /// upload `upload_id` names (unfinished, or complete when `completed` —
    /// the md5-mismatch case), never what another request stored meanwhile.
    ///
    /// Without an upload id (a reference server) nothing can be scoped, so
    /// a failed upload's unfinished file is left where it is (a later SAVE of
    /// the key restarts it); only a file this request itself just completed
    /// with a wrong md5 is deleted by key.
    pub async fn discard_upload(
        &self,
        token: &str,
        key: &str,
        upload_id: Option<&str>,
        completed: bool,
    ) {
        self.metrics.upload_cleanups.inc();
        let result = match upload_id {
            Some(id) => {
                self.call(token, async |c| c.file_delete_upload(key, id).await)
                    .await
            }
            None if completed => self.file_delete(token, key.to_owned()).await,
            None => {
                debug!(%key, "no upload id: leaving the unfinished upload in place");
                return;
            }
        };
        match result {
            // Gone already, or the key now holds someone else's upload.
            Ok(()) => {}
            Err(GatewayError::Step { problem, .. }) if problem.is_gone() => {}
            Err(e) => warn!(%key, error = %e, "could not discard a failed upload"),
        }
    }
}
