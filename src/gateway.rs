//! Serving the open-platform HTTP API ([`paytx_gateway`]) from a node: the
//! gateway reaches the cluster through this node's own request handler, in
//! process, so it is stateless and any node can answer.

use paytx_gateway::{GatewayError, PayMethod, RouteConfig, RunningGateway};
use paytx_node::{NodeConfig, NodeService};
use paytx_participants::{ChannelConfig, ChannelKind};
use paytx_protocol::{BoxFuture, Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;

struct InProcess(Arc<NodeService>);

impl paytx_gateway::ClusterApi for InProcess {
    fn call(&self, request: Request) -> BoxFuture<Response> {
        Box::pin(self.0.clone().handle_request(request, true))
    }
}

/// One route per configured channel, weight 1 (the default when `[gateway]`
/// lists no `routes`).
pub fn routes_of(channels: &[ChannelConfig]) -> Vec<RouteConfig> {
    channels
        .iter()
        .map(|channel| RouteConfig {
            method: match channel.kind {
                ChannelKind::BankCard => PayMethod::BankCard,
                ChannelKind::Alipay => PayMethod::Alipay,
                ChannelKind::WechatPay => PayMethod::Wechat,
            },
            channel: channel.id,
            weight: 1,
        })
        .collect()
}

/// Starts the API of the node `service` on `listen` (on the current runtime).
pub async fn start(
    config: &NodeConfig,
    service: Arc<NodeService>,
    listen: SocketAddr,
) -> Result<RunningGateway, GatewayError> {
    // An audit log the gateway cannot make durable stops the whole node,
    // like any other disk write or fsync error (see `paytx_node::fail_stop`).
    let latch = service.fail_stop().clone();
    let gateway = paytx_gateway::Gateway::new(
        config.gateway.clone(),
        Arc::new(InProcess(service.clone())),
        config.node_id,
        &config.data_dir,
        &routes_of(&config.channels),
    )?
    .with_fail_stop(Arc::new(move |reason| latch.trip(reason)));
    let running = paytx_gateway::start(gateway, listen).await?;
    // The node status (every node's admin view of the cluster) shows this
    // node's audit chain as the gateway's last check found it.
    // Weakly: the gateway holds the service, which must not hold it back.
    let checked = Arc::downgrade(running.gateway());
    service.set_audit_chain_source(Arc::new(move || checked.upgrade().map(|gateway| gateway.audit.last_check())));
    Ok(running)
}
