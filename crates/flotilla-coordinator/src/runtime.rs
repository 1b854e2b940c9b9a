//! Building the runtime of a job, new (`submit.rs`) or recovered (`recovery.rs`): the machine
//! with its secure aggregator installed (`[secagg]`), the model version served to downloads and
//! the evaluator. Kept apart from `jobs.rs` so that driving a job (which `secagg_round.rs` calls)
//! does not depend on the secure aggregation module that installs into the machine.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_core::round::RoundMachine;
use flotilla_proto::ExpectedLayout;
use flotilla_store::JobId;
use tokio::sync::Mutex;

use crate::spec::JobSpec;
use crate::state::{JobInner, JobRuntime, ModelVersion, Shared};

impl Shared {
    /// Builds the runtime of a new or recovered job around its machine.
    pub fn runtime(
        &self,
        id: JobId,
        spec: JobSpec,
        machine: RoundMachine,
        evaluator: Option<Box<dyn crate::models::Evaluate>>,
    ) -> Result<Arc<JobRuntime>, String> {
        let mut machine = machine;
        let layout = machine.layout().clone();
        // `[secagg]`: the machine's secure aggregator (a recovered machine has none).
        let secagg = crate::secagg_round::install(&spec, &mut machine)?;
        let model_spec = spec.proto_model_spec();
        let control = machine.strategy().client_directive().server_control;
        let current = Arc::new(ModelVersion::new(
            machine.rounds_committed(),
            machine.global().to_vec(),
            &layout,
            &model_spec,
            control,
        ));
        let origin = (machine.strategy().spec().fedbuff.is_some()
            && machine.rounds_committed() == 0)
            .then(|| current.clone());
        Ok(Arc::new(JobRuntime {
            id,
            // Under SCAFFOLD a report is the parameters followed by Δcᵢ: twice the model.
            expected: ExpectedLayout {
                len: machine.strategy().report_len() as u64,
                fingerprint: layout.fingerprint(),
            },
            model_spec,
            layout,
            spec,
            secagg,
            inner: Mutex::new(JobInner {
                machine,
                current,
                previous: None,
                origin,
                deadline_ms: None,
                accepted: HashMap::new(),
                halted: None,
                notes: Default::default(),
                trace: Default::default(),
                ended: None,
            }),
            evaluations: evaluator.map(crate::evaluation::Evaluations::new),
        }))
    }
}
