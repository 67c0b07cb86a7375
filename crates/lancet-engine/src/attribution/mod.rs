//! Attribution: which container (and image, and pod) an event belongs to.
//! PLACEHOLDER-INTERFACE: being written; see the helper's task.
