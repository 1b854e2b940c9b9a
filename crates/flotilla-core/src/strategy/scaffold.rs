//! SCAFFOLD's client side (Karimireddy et al. 2020, option II) and what a client is told to do
//! besides plain local SGD.

/// What a selected client must do besides plain local SGD, sent with its task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientDirective<'a> {
    /// FedProx μ (0 = none).
    pub proximal_mu: f64,
    /// SCAFFOLD's server control variate `c`; the client keeps its own `cᵢ` and reports `Δcᵢ`.
    pub server_control: Option<&'a [f32]>,
}

/// SCAFFOLD's client side: the correction `c − cᵢ` added to every local gradient. A client that
/// has no control variate yet (`cᵢ` = `None`, its first round) uses `cᵢ = 0`.
pub fn scaffold_correction(server_control: &[f32], client_control: Option<&[f32]>) -> Vec<f32> {
    match client_control {
        Some(ci) if ci.len() == server_control.len() => server_control
            .iter()
            .zip(ci)
            .map(|(c, ci)| c - ci)
            .collect(),
        _ => server_control.to_vec(),
    }
}

/// SCAFFOLD's client control-variate update, option II of Karimireddy et al. (2020):
/// `cᵢ⁺ = cᵢ − c + (x − yᵢ)/(K·η)` for global model `x`, local result `yᵢ`, `K` local steps of
/// learning rate `η`. Updates `client_control` in place (a wrong-length or empty one is treated as
/// zeros and replaced) and returns `Δcᵢ = cᵢ⁺ − cᵢ`, which the client reports after its parameters.
///
/// The simulator and the client SDK both call this, so simulated and real SCAFFOLD clients agree.
pub fn scaffold_client_update(
    client_control: &mut Vec<f32>,
    server_control: &[f32],
    global: &[f32],
    local: &[f32],
    steps: u64,
    learning_rate: f32,
) -> Vec<f32> {
    if client_control.len() != server_control.len() {
        *client_control = vec![0.0; server_control.len()];
    }
    let k_eta = steps.max(1) as f32 * learning_rate;
    let mut delta = Vec::with_capacity(server_control.len());
    for ((ci, c), (x, y)) in client_control
        .iter_mut()
        .zip(server_control)
        .zip(global.iter().zip(local))
    {
        let new = *ci - c + (x - y) / k_eta;
        delta.push(new - *ci);
        *ci = new;
    }
    delta
}
