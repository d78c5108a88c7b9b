//! Conversion tests for RouteConfiguration: what is accepted, what is NACKed and how the
//! error names the field.
