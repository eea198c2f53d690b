//! Key administration calls (`KeyAdmin` service) on [`Client`]: create, get, list, rotate.

use std::collections::BTreeMap;

use keybroker_proto::v1 as pb;

use crate::client::to_map;
use crate::types::{KeyInfo, KeyPage, KeyPurpose};
use crate::{Client, ClientError};

/// Upper bound on pages followed by [`Client::list_all_keys`], so that a broker handing out the
/// same page token forever cannot loop us.
const MAX_PAGES: usize = 10_000;

impl Client {
    /// Creates key `name` with version 1 on HSM `hsm_id` (`None`: the first HSM whose
    /// jurisdiction is allowed).
    ///
    /// # Errors
    /// `Status` with the broker's code (`INVALID_ARGUMENT` for a bad name or purpose,
    /// `ALREADY_EXISTS`/`FAILED_PRECONDITION` for a reused name, `PERMISSION_DENIED`), token-file
    /// errors.
    pub async fn create_key(
        &self,
        name: &str,
        purpose: KeyPurpose,
        labels: &BTreeMap<String, String>,
        hsm_id: Option<&str>,
    ) -> Result<KeyInfo, ClientError> {
        let msg = pb::CreateKeyRequest {
            name: name.to_owned(),
            purpose: purpose.to_pb() as i32,
            labels: to_map(labels),
            hsm_id: hsm_id.unwrap_or_default().to_owned(),
            rotation_period: None,
            algorithm: 0,
        };
        let (req, rid) = self.request(msg).await?;
        let key = self
            .key_admin()
            .create_key(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(key.into())
    }

    /// Describes key `name`.
    ///
    /// # Errors
    /// `Status` (`PERMISSION_DENIED` also for a key that does not exist), token-file errors.
    pub async fn get_key(&self, name: &str) -> Result<KeyInfo, ClientError> {
        let (req, rid) = self
            .request(pb::GetKeyRequest {
                name: name.to_owned(),
            })
            .await?;
        let key = self
            .key_admin()
            .get_key(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(key.into())
    }

    /// One page of keys whose name starts with `prefix`. `page_size` 0 means the broker's
    /// default (100); `page_token` is `""` for the first page.
    ///
    /// # Errors
    /// `Status` (e.g. `INVALID_ARGUMENT` for a bad page token), token-file errors.
    pub async fn list_keys(
        &self,
        prefix: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<KeyPage, ClientError> {
        let msg = pb::ListKeysRequest {
            prefix: prefix.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        };
        let (req, rid) = self.request(msg).await?;
        let resp = self
            .key_admin()
            .list_keys(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(KeyPage {
            keys: resp.keys.into_iter().map(KeyInfo::from).collect(),
            next_page_token: Some(resp.next_page_token).filter(|t| !t.is_empty()),
        })
    }

    /// Every key whose name starts with `prefix`, following page tokens.
    ///
    /// # Errors
    /// As [`Client::list_keys`]; `MalformedResponse` when the broker repeats a page token.
    pub async fn list_all_keys(&self, prefix: &str) -> Result<Vec<KeyInfo>, ClientError> {
        let mut keys = Vec::new();
        let mut token = String::new();
        for _ in 0..MAX_PAGES {
            let page = self.list_keys(prefix, 0, &token).await?;
            keys.extend(page.keys);
            match page.next_page_token {
                None => return Ok(keys),
                Some(next) if next == token => break,
                Some(next) => token = next,
            }
        }
        Err(ClientError::MalformedResponse {
            problem: "ListKeys page tokens do not end",
            request_id: String::new(),
        })
    }

    /// Adds a new version to key `name`; new encryptions use it, older ciphertexts still open.
    ///
    /// # Errors
    /// `Status` (`PERMISSION_DENIED`, `FAILED_PRECONDITION` for a disabled key, `UNAVAILABLE`),
    /// token-file errors.
    pub async fn rotate_key(&self, name: &str) -> Result<KeyInfo, ClientError> {
        let (req, rid) = self
            .request(pb::RotateKeyRequest {
                name: name.to_owned(),
            })
            .await?;
        let key = self
            .key_admin()
            .rotate_key(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(key.into())
    }
}
