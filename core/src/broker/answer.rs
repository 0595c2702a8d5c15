//! Answering the requests of the control socket (SPEC §10: `btbctl`, `signal_event`, clients):
//! the handler this broker's `ControlListener` calls (`open.rs`).

use std::sync::Arc;

use uuid::Uuid;

use super::Broker;
use super::backend::Backend;
use crate::control::{Reply, Request};
use crate::error::Result;
use crate::registry::EventKey;

impl Broker {
    /// Answers one request of the control socket.
    pub(crate) fn answer(self: &Arc<Self>, request: Request) -> Reply {
        let this = || Arc::clone(self);
        let result = match request {
            // The control server answers these itself.
            Request::Hello { .. }
            | Request::Subscribe
            | Request::Offer { .. }
            | Request::Attach { .. }
            | Request::Ready
            | Request::Unknown => Ok(Reply::Done),
            Request::Signal { name } => self
                .fire_event(&EventKey::Custom(name))
                .map(|count| Reply::Fired { count }),
            Request::List => self.task_views(None).map(|tasks| Reply::Tasks { tasks }),
            Request::Show { task } => self.task_views(Some(&task)).map(|mut v| Reply::Task {
                task: Box::new(v.remove(0)),
            }),
            Request::History { task } => self.task_id_of(&task).and_then(|id| {
                Ok(Reply::Runs {
                    runs: Backend::history(this(), &id)?
                        .iter()
                        .map(Into::into)
                        .collect(),
                })
            }),
            Request::Run {
                task,
                ignore_conditions,
                details,
                keep,
            } => self
                .run_now(&task, ignore_conditions, details, keep)
                .map(|()| Reply::Done),
            Request::Unregister { task, cancel_task } => self
                .task_id_of(&task)
                .and_then(|id| self.unregister_task(&id, cancel_task))
                .map(|()| Reply::Done),
            Request::Uninstall => self.uninstall().map(|tasks| Reply::Uninstalled { tasks }),
            Request::Waiting { offer } => {
                self.waiting_for(&offer).map(|runs| Reply::Waiting { runs })
            }
            Request::Doctor => {
                let backend: Arc<dyn Backend> = this();
                backend.doctor().map(|states| Reply::Doctor {
                    states,
                    broker: Some(std::process::id()),
                    store_error: self.store_failure().map(|e| e.message().to_owned()),
                })
            }
            Request::Register {
                builder,
                activation,
            } => {
                let backend: Arc<dyn Backend> = this();
                self.register_with(&builder, |g| activation || backend.has_activation(g))
                    .map(|record| Reply::Registered {
                        record: (*record).clone(),
                    })
            }
            Request::Registrations { filter } => {
                self.records(&filter).map(|list| Reply::Registrations {
                    records: list.iter().map(|r| (**r).clone()).collect(),
                })
            }
            Request::Groups => this()
                .all_task_groups()
                .map(|groups| Reply::Groups { groups }),
            Request::RunHistory { task_id } => {
                Backend::history(this(), &task_id).map(|runs| Reply::History { runs })
            }
            Request::Request {
                trigger_id,
                arguments,
            } => Backend::request(this(), &trigger_id, arguments)
                .map(|result| Reply::Requested { result }),
            Request::Raise { event } => this()
                .raise_event(event)
                .map(|count| Reply::Fired { count }),
            Request::SetState { condition, value } => {
                this().set_state(condition, value).map(|()| Reply::Done)
            }
            Request::StateOf { condition } => this().state(condition).and_then(|state| {
                Ok(Reply::StateOf {
                    state,
                    source: this().state_source(condition)?.to_owned(),
                })
            }),
            Request::WorkCost => this()
                .background_work_cost()
                .map(|cost| Reply::WorkCost { cost }),
            Request::Due { task_id } => this()
                .due(&task_id)
                .map(|(next_due_ms, spent)| Reply::Due { next_due_ms, spent }),
        };
        result.unwrap_or_else(|e| Reply::error(&e))
    }

    fn task_id_of(&self, task: &str) -> Result<Uuid> {
        let st = self.open_state()?;
        self.find_task(&st, task)
    }
}
