//! A table of invalid documents, each with the exact field path (and a fragment of the
//! message) the validator must report, and proof that all errors of a document are
//! reported together.

use mesh_api::validation::validate_text;

/// (what, document, expected field path, message fragment)
const CASES: &[(&str, &str, &str, &str)] = &[
    // --- structure (schema) ---
    (
        "unknown field",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}], timeot: 1s}]}",
        "spec.http[0].timeot",
        "unknown field \"timeot\" (did you mean \"timeout\"?)",
    ),
    (
        "wrong type",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: r}",
        "spec.hosts",
        "must be a list, got a string",
    ),
    (
        "bad enum",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, trafficPolicy: {loadBalancer: {simple: FASTEST}}}",
        "spec.trafficPolicy.loadBalancer.simple",
        "unsupported value \"FASTEST\"",
    ),
    (
        "port out of range",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 99999999999, name: http, protocol: HTTP}, hosts: ['*']}]}",
        "spec.servers[0].port.number",
        "must be <=",
    ),
    (
        "missing name",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {namespace: foo}\nspec: {}",
        "metadata.name",
        "required field missing",
    ),
    (
        "bad namespace",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: Foo_Bar}\nspec: {}",
        "metadata.namespace",
        "not a valid DNS-1123 label",
    ),
    (
        "unknown version",
        "apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: g}\nspec: {}",
        "apiVersion",
        "not served",
    ),
    // --- VirtualService semantics ---
    (
        "retry attempts negative",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}], retries: {attempts: -1}}]}",
        "spec.http[0].retries.attempts",
        "must not be negative",
    ),
    (
        "bad timeout",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}], timeout: 10}]}",
        "spec.http[0].timeout",
        "must be a string",
    ),
    (
        "timeout without unit",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}], timeout: '10'}]}",
        "spec.http[0].timeout",
        "missing unit",
    ),
    (
        "bad regex",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{match: [{uri: {regex: '(unclosed'}}], route: [{destination: {host: r}}]}]}",
        "spec.http[0].match[0].uri.regex",
        "invalid regex",
    ),
    (
        "no hosts and no routes",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {gateways: [mesh]}",
        "spec.gateways",
        "delegate virtual service",
    ),
    (
        "route without destination host",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {subset: v1}}]}]}",
        "spec.http[0].route[0].destination.host",
        "destination host is required",
    ),
    (
        "negative weight",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: a}, weight: -10}, {destination: {host: b}, weight: 110}]}]}",
        "spec.http[0].route[0].weight",
        "must not be negative",
    ),
    (
        "bad subset name",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r, subset: V_1}}]}]}",
        "spec.http[0].route[0].destination.subset",
        "invalid subset name",
    ),
    (
        "fault percentage above 100",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}], fault: {abort: {httpStatus: 503, percentage: {value: 150}}}}]}",
        "spec.http[0].fault.abort.percentage.value",
        "must be in the range 0..100",
    ),
    (
        "bad header name",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}], headers: {request: {set: {'bad header': x}}}}]}",
        "spec.http[0].headers.request.set[bad header]",
        "invalid header name",
    ),
    (
        "redirect code not 3xx",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{redirect: {uri: /x, redirectCode: 200}}]}",
        "spec.http[0].redirect.redirectCode",
        "must be 3xx",
    ),
    (
        "route and redirect",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{redirect: {uri: /x}, route: [{destination: {host: r}}]}]}",
        "spec.http[0]",
        "only one of route, redirect",
    ),
    (
        "bad retryOn",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}], retries: {attempts: 2, retryOn: '5xx,sometimes'}}]}",
        "spec.http[0].retries.retryOn",
        "\"sometimes\" is not a valid retryOn policy",
    ),
    (
        "wildcard host on mesh",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: ['*'], http: [{route: [{destination: {host: r}}]}]}",
        "spec.hosts[0]",
        "not allowed for virtual services bound to the mesh gateway",
    ),
    (
        "tls sni not in hosts",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [a.example.com], gateways: [gw], tls: [{match: [{sniHosts: [b.example.com]}], route: [{destination: {host: r}}]}]}",
        "spec.tls[0].match[0].sniHosts[0]",
        "not a match for any of the virtual service hosts",
    ),
    (
        "bad destination subnet",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], tcp: [{match: [{destinationSubnets: [10.0.0.0/33]}], route: [{destination: {host: r}}]}]}",
        "spec.tcp[0].match[0].destinationSubnets[0]",
        "not a valid IP address or CIDR",
    ),
    (
        "mirror percentage",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}], mirror: {host: m}, mirrorPercentage: {value: -1}}]}",
        "spec.http[0].mirrorPercentage.value",
        "must be in the range 0..100",
    ),
    (
        "exportTo star combined",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], exportTo: ['*', foo], http: [{route: [{destination: {host: r}}]}]}",
        "spec.exportTo",
        "cannot be combined",
    ),
    // --- DestinationRule ---
    (
        "duplicate subset",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, subsets: [{name: v1}, {name: v1}]}",
        "spec.subsets[1].name",
        "duplicate subset name",
    ),
    (
        "outlier max ejection percent",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}}",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "must be in the range 0..100",
    ),
    (
        "negative max connections",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}}",
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        "must not be negative",
    ),
    (
        "mutual tls without cert",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, trafficPolicy: {tls: {mode: MUTUAL}}}",
        "spec.trafficPolicy.tls.clientCertificate",
        "client certificate required",
    ),
    (
        "locality weights not 100",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: 'us/*', to: {'us/*': 50}}]}}}}",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        "must be 100",
    ),
    (
        "simple and consistent hash",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}}",
        "spec.trafficPolicy.loadBalancer",
        "only one of simple or consistentHash",
    ),
    (
        "port level without port",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}}",
        "spec.trafficPolicy.portLevelSettings[0].port",
        "port is required",
    ),
    (
        "bad subset label",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, subsets: [{name: v1, labels: {'bad key!': v1}}]}",
        "spec.subsets[0].labels[bad key!]",
        "invalid label key",
    ),
    // --- Gateway ---
    (
        "gateway without hosts",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 80, name: http, protocol: HTTP}}]}",
        "spec.servers[0].hosts",
        "at least one host",
    ),
    (
        "gateway bad protocol",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 80, name: http, protocol: SMTP}, hosts: ['*']}]}",
        "spec.servers[0].port.protocol",
        "invalid protocol",
    ),
    (
        "https without tls",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*']}]}",
        "spec.servers[0].tls",
        "must have TLS settings",
    ),
    (
        "simple tls without credentials",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE}}]}",
        "spec.servers[0].tls.serverCertificate",
        "server certificate",
    ),
    (
        "port zero",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 0, name: http, protocol: HTTP}, hosts: ['*']}]}",
        "spec.servers[0].port.number",
        "must be in the range 1..65535",
    ),
    // --- ServiceEntry / WorkloadEntry / Sidecar ---
    (
        "service entry without hosts",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {ports: [{number: 80, name: http}]}",
        "spec.hosts",
        "at least one host",
    ),
    (
        "static without endpoints",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.com], ports: [{number: 80, name: http}], resolution: STATIC}",
        "spec.endpoints",
        "required for resolution type STATIC",
    ),
    (
        "bad address",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.com], addresses: [300.1.1.1], ports: [{number: 80, name: http}]}",
        "spec.addresses[0]",
        "not a valid IP address or CIDR",
    ),
    (
        "endpoint port not declared",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.com], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 1.1.1.1, ports: {grpc: 81}}]}",
        "spec.endpoints[0].ports[grpc]",
        "not defined by the service entry",
    ),
    (
        "workload entry without address",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec: {labels: {app: a}}",
        "spec.address",
        "address is required",
    ),
    (
        "sidecar egress host without namespace",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {egress: [{hosts: [reviews]}]}",
        "spec.egress[0].hosts[0]",
        "namespace/dnsName",
    ),
    (
        "sidecar bad default endpoint",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: '10.1.1.1:8080'}]}",
        "spec.ingress[0].defaultEndpoint",
        "must use 127.0.0.1",
    ),
    // --- security ---
    (
        "port level mtls without selector",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {portLevelMtls: {'8080': {mode: DISABLE}}}",
        "spec.portLevelMtls",
        "requires a workload selector",
    ),
    (
        "bad mtls mode",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: SOMETIMES}}",
        "spec.mtls.mode",
        "unsupported value",
    ),
    (
        "custom without provider",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {action: CUSTOM, rules: [{}]}",
        "spec.provider",
        "required for action CUSTOM",
    ),
    (
        "empty source",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {rules: [{from: [{source: {}}]}]}",
        "spec.rules[0].from[0].source",
        "must not be empty",
    ),
    (
        "bad ip block",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {rules: [{from: [{source: {ipBlocks: [1.2.3.4/40]}}]}]}",
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "not a valid IP address or CIDR",
    ),
    (
        "unknown condition key",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {rules: [{when: [{key: request.color, values: [red]}]}]}",
        "spec.rules[0].when[0].key",
        "unknown attribute",
    ),
    (
        "bad operation port",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {rules: [{to: [{operation: {ports: [http]}}]}]}",
        "spec.rules[0].to[0].operation.ports[0]",
        "not a number",
    ),
    (
        "bad action",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {action: PERMIT}",
        "spec.action",
        "unsupported value \"PERMIT\"",
    ),
    (
        "jwt without issuer",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec: {jwtRules: [{jwksUri: 'https://example.com/jwks'}]}",
        "spec.jwtRules[0].issuer",
        "issuer must be set",
    ),
    (
        "jwt bad jwks uri",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec: {jwtRules: [{issuer: foo, jwksUri: 'ftp://example.com/jwks'}]}",
        "spec.jwtRules[0].jwksUri",
        "must be an http:// or https:// URL",
    ),
    (
        "jwt bad inline jwks",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec: {jwtRules: [{issuer: foo, jwks: 'not json'}]}",
        "spec.jwtRules[0].jwks",
        "not valid JSON",
    ),
    (
        "selector and targetRef",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec: {selector: {matchLabels: {a: b}}, targetRef: {kind: Gateway, name: gw}}",
        "spec.selector",
        "only one of selector or targetRef",
    ),
    // --- telemetry ---
    (
        "sampling above 100",
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\nspec: {tracing: [{randomSamplingPercentage: 120}]}",
        "spec.tracing[0].randomSamplingPercentage",
        "must be in the range 0..100",
    ),
    (
        "remove with value",
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\nspec: {metrics: [{overrides: [{tagOverrides: {response_code: {operation: REMOVE, value: x}}}]}]}",
        "spec.metrics[0].overrides[0].tagOverrides[response_code].value",
        "must not be set for REMOVE",
    ),
    (
        "bad metric",
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\nspec: {metrics: [{overrides: [{match: {metric: EVERYTHING}}]}]}",
        "spec.metrics[0].overrides[0].match.metric",
        "unsupported value",
    ),
];

#[test]
fn each_invalid_document_reports_the_exact_field() {
    let mut failures = Vec::new();
    for (what, doc, path, fragment) in CASES {
        let results = validate_text(doc, "case.yaml");
        let [Err(err)] = results.as_slice() else {
            failures.push(format!(
                "{what}: expected one invalid document, got {results:?}"
            ));
            continue;
        };
        let found = err
            .errors
            .iter()
            .any(|e| e.path == *path && e.message.contains(fragment));
        if !found {
            failures.push(format!(
                "{what}: expected `{path}: ...{fragment}...`, got:\n{err}"
            ));
        }
        assert_eq!(err.file, "case.yaml");
        assert!(
            err.resource.is_some(),
            "{what}: the error names the resource"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_error_in_a_document_and_every_invalid_document_is_reported() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}, weight: -1}, {destination: {host: reviews}, weight: 1}]
    timeout: soon
    retries: {attempts: -3, perTryTimeout: 0.5ms}
    fault: {abort: {httpStatus: 700, percentage: {value: 101}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec: {host: reviews, subsets: [{name: v1}, {name: v1}], bogus: true, trafficPolicy: {tls: {mode: PLAIN}}}
";
    let results = validate_text(text, "many.yaml");
    assert_eq!(results.len(), 3);
    let first = results[0].as_ref().expect_err("first is invalid");
    let paths: Vec<&str> = first.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.http[0].route[0].weight",
            "spec.http[0].timeout",
            "spec.http[0].retries.attempts",
            "spec.http[0].retries.perTryTimeout",
            "spec.http[0].fault.abort.httpStatus",
            "spec.http[0].fault.abort.percentage.value",
        ],
        "{first}"
    );
    assert_eq!(
        first.resource.as_deref(),
        Some("VirtualService default/reviews")
    );
    assert_eq!(first.line, Some(1));
    assert!(
        first.to_string().starts_with(
            "many.yaml:1: VirtualService default/reviews: spec.http[0].route[0].weight: "
        ),
        "{first}"
    );
    assert!(results[1].is_ok());
    // Schema errors stop before semantics, but all of them are reported.
    let third = results[2].as_ref().expect_err("third is invalid");
    let paths: Vec<&str> = third.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["spec.bogus", "spec.trafficPolicy.tls.mode"],
        "{third}"
    );
    assert_eq!(third.line, Some(17));
}
