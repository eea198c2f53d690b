//! One macro for every audited RPC: the trait method opens a [`super::audit::Recorder`] for
//! its op, runs the inherent handler of the same name with it, and lets the recorder append
//! the record (granted or refused) before the response leaves.

/// Implements a tonic service trait for `$api` (which has a `state: Arc<ApiState>` field and
/// one inherent `async fn $method(&self, Request<$req>, &mut Recorder)` per RPC).
macro_rules! audited_service {
    ($trait:ident for $api:ty { $($method:ident($req:ty) -> $resp:ty = $op:ident;)* }
        $(not audited { $($extra:item)* })?) => {
        #[tonic::async_trait]
        impl $trait for $api {
            // Methods that are not key operations (no record), written out in full.
            $($($extra)*)?
            $(
                async fn $method(
                    &self,
                    req: tonic::Request<$req>,
                ) -> Result<tonic::Response<$resp>, tonic::Status> {
                    let mut rec = self.state.recorder(crate::audit::Op::$op);
                    // Inherent methods win over trait methods: this is the handler. It gets a
                    // bounded time, so a slow or lost catalog or HSM answers UNAVAILABLE before
                    // a client's deadline does (the record appended says so).
                    let result = match tokio::time::timeout(
                        crate::api::audit::WORK_BUDGET,
                        Self::$method(self, req, &mut rec),
                    )
                    .await
                    {
                        Ok(result) => result,
                        Err(_) => Err(rec.over_budget()),
                    };
                    rec.finish(result).await
                }
            )*
        }
    };
}

pub(crate) use audited_service;
