//! How events enter the daemon: [`webhook`] sources over HTTP. (Plugin sources are polled by
//! [`crate::module::poller`]; plugins emit through their host services.)

pub mod webhook;
