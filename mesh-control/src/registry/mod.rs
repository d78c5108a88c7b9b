//! The service registry: Kubernetes Services with their EndpointSlices (or the Pods they
//! select), ServiceEntries and WorkloadEntries, as one model of services and endpoints.
