import Foundation
import KangarooTestSupport
import Testing

/// The same pods through containerd's CRI plugin on two networks: Debian's
/// reference plugins (bridge + host-local + portmap) and kangaroo-cni (its
/// pool filled first, so pods get prepared namespaces). Inside the pod the
/// addresses, routes, DNS configuration and hostname are compared after the
/// subnet is normalised; reachability of the other pod, of the node and of a
/// hostPort is checked on both; nothing may be left once the pods are gone.
@Suite("CRI pod network", .serialized, .enabled(if: TestEnv.enabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd"),
                                                "needs root, KANGAROO_INTEGRATION=1 and containerd"))
struct CRINetworkTests {
    let image = "kangaroo.test/sample:latest"
    var script: String { TestEnv.repoRoot + "/scripts/cri-pod.py" }

    struct Observed: Equatable, CustomStringConvertible {
        var addresses: [String]
        var routes: [String]
        var resolvConf: String
        var hostname: String
        var reach: [String: String]
        var description: String { "addresses \(addresses)\nroutes \(routes)\nresolv.conf \(resolvConf)\nhostname \(hostname)\nreach \(reach)" }
    }

    /// Runs two pods on a containerd whose conf_dir holds `conflist`;
    /// `subnet` is the pods' /24 (A.B.C.), normalised to POD. in the result.
    func observe(_ label: String, conflist: (TempDir) -> String, subnet: String, hostPort: Int, kangarooPod: Bool = false,
                 prepare: (TempDir) throws -> Void = { _ in }, leftovers: (TempDir) throws -> [String]) throws -> Observed {
        let node = try TempDir("cri-net-\(label)")
        let bin = node.sub("cni-bin")
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        for p in ["loopback", "bridge", "host-local", "portmap"] {
            try FileManager.default.createSymbolicLink(atPath: bin + "/" + p, withDestinationPath: "/usr/lib/cni/" + p)
        }
        try FileManager.default.createSymbolicLink(atPath: bin + "/kangaroo-cni", withDestinationPath: TestNetwork.plugin)
        try FileManager.default.createDirectory(atPath: node.sub("cni"), withIntermediateDirectories: true)
        try conflist(node).write(toFile: node.sub("cni/10-pods.conflist"), atomically: true, encoding: .utf8)
        try prepare(node)
        let containerd = try TestContainerd.forKangaroo(node: node, extraConfig: criConfig(node: node, snapshotter: "overlayfs", cniBin: bin), cri: true)
        defer {
            _ = try? run("python3", [script, containerd.socket, "--remove-all"])
            tearDownNode(node, containerd: containerd)
        }
        try importPauseAndSample(containerd)
        func pod(_ name: String, _ extra: [String], handler: String = "runc") throws -> [String: Any] {
            let r = try run("python3", [script, containerd.socket, handler, image, name, "--pod-network", "--keep",
                                        "--log-dir", node.sub("logs/" + name)] + extra)
            #expect(r.status == 0, "\(label) \(name): \(r.output)\n\(containerd.log.suffix(3000))")
            return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
        }
        let a = try pod("net-a", ["--port", "\(hostPort):8080"])
        let b = try pod("net-b", [])
        let ipA = a["ip"] as? String ?? "?", netnsA = a["netns"] as? String ?? "?", netnsB = b["netns"] as? String ?? "?"
        #expect(ipA.hasPrefix(subnet), "\(label): pod address \(ipA)")
        func inPod(_ netns: String, _ args: [String]) throws -> String {
            try run("/usr/bin/nsenter", ["--net=" + netns] + args).stdout
        }
        func normal(_ text: String) -> [String] {
            text.split(separator: "\n").map { line in
                var l = String(line).replacingOccurrences(of: subnet, with: "POD.")
                // Interface indexes and lifetimes differ from run to run.
                l = l.replacingOccurrences(of: #"^\d+: "#, with: "", options: .regularExpression)
                l = l.replacingOccurrences(of: #"\\\s+valid_lft.*$"#, with: "", options: .regularExpression)
                return l.trimmingCharacters(in: .whitespaces)
            }.sorted()
        }
        let server = try NamespaceServer(netns: netnsA, port: 8080, dir: node)
        defer { withExtendedLifetime(server) {} }
        func curl(_ netns: String?, _ url: String) throws -> String {
            let args = ["-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", url]
            if let netns { return (try? inPod(netns, ["curl"] + args)) ?? "000" }
            return (try? run("/usr/bin/curl", args).stdout) ?? "000"
        }
        let observed = Observed(
            addresses: normal(try inPod(netnsA, ["ip", "-o", "-4", "addr", "show"])),
            routes: normal(try inPod(netnsA, ["ip", "route", "show"])),
            resolvConf: a["resolv_conf"] as? String ?? "?",
            hostname: a["hostname"] as? String ?? "?",
            reach: ["pod to pod": try curl(netnsB, "http://\(ipA):8080/"),
                    "node to pod": try curl(nil, "http://\(ipA):8080/"),
                    "host port from the node": try curl(nil, "http://127.0.0.1:\(hostPort)/")])
        var pods = 2
        if kangarooPod {
            // The node daemon's runtime joins the namespace CNI configured.
            let k = try pod("net-k", [], handler: "kangaroo")
            let ip = k["ip"] as? String ?? "?"
            let inside = try inPod(k["netns"] as? String ?? "?", ["ip", "-o", "-4", "addr"])
            #expect(ip.hasPrefix(subnet) && inside.contains(ip + "/"), "\(k)")
            let pid = k["pid"] as? Int ?? 0
            #expect(readlink("/proc/\(pid)/ns/net") == readlink(k["netns"] as? String ?? "?"), "the kangaroo sandbox runs in the pod's namespace")
            pods += 1
        }
        let removed = try run("python3", [script, containerd.socket, "--remove-all"])
        #expect(removed.stdout.contains("\"removed\": \(pods)"), "\(removed.output)")
        #expect(!FileManager.default.fileExists(atPath: netnsA) && !FileManager.default.fileExists(atPath: netnsB),
                "\(label): the pods' namespaces outlived them")
        let left = try leftovers(node)
        #expect(left.isEmpty, "\(label) left: \(left)")
        return observed
    }

    /// The namespace a path or /proc/PID/ns/net names (net:[INODE]).
    func readlink(_ path: String) -> String {
        if path.hasPrefix("/proc/") { return (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?" }
        return (try? run("/usr/bin/stat", ["-L", "-c", "net:[%i]", path]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? "?"
    }

    func links(prefix: String) throws -> [String] {
        try run("/usr/sbin/ip", ["-o", "link", "show"]).stdout.split(separator: "\n").compactMap { line in
            let name = String(line.split(separator: ":").dropFirst().first?.trimmingCharacters(in: .whitespaces).split(separator: "@").first ?? "")
            return name.hasPrefix(prefix) ? name : nil
        }
    }

    @Test("a pod on kangaroo-cni sees and reaches what a pod on bridge + host-local + portmap does")
    func matchesTheReferencePlugins() throws {
        let reference = try observe("bridge", conflist: { node in
            """
            {"cniVersion":"1.0.0","name":"ref-pods","plugins":[
              {"type":"bridge","bridge":"kgtref0","isGateway":true,"ipMasq":true,
               "ipam":{"type":"host-local","ranges":[[{"subnet":"10.241.1.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"\(node.sub("ipam"))"}},
              {"type":"portmap","capabilities":{"portMappings":true}}]}
            """
        }, subnet: "10.241.1.", hostPort: 18601, leftovers: { node in
            // The bridge plugin keeps its bridge; veths and addresses go.
            let veths = try run("/usr/sbin/ip", ["-o", "link", "show", "master", "kgtref0"]).stdout.split(separator: "\n").map(String.init)
            let ips = ((try? FileManager.default.contentsOfDirectory(atPath: node.sub("ipam/ref-pods"))) ?? []).filter { $0.hasPrefix("10.") }
            return veths + ips
        })
        defer {
            _ = try? run("/usr/sbin/ip", ["link", "del", "kgtref0"])
            // portmap's and bridge's iptables chains for this network.
            _ = try? run("/bin/sh", ["-c", "iptables -t nat -S | grep -q 10.241.1. && echo left"])
        }
        let conf = #"{"cniVersion":"1.0.0","name":"kgt-pods","plugins":[{"type":"kangaroo-cni","bridge":"kgtk0","subnet":"10.241.2.0/24","ifPrefix":"kt41x","poolSize":4,"stateDir":"STATE","capabilities":{"portMappings":true}}]}"#
        var confPath = ""
        let kangaroo = try observe("kangaroo", conflist: { node in conf.replacingOccurrences(of: "STATE", with: node.sub("netstate")) },
                                   subnet: "10.241.2.", hostPort: 18602, kangarooPod: true, prepare: { node in
            confPath = node.sub("cni/10-pods.conflist")
            let fill = try run(TestEnv.kangaroo, ["network", "fill", confPath])
            #expect(fill.status == 0 && fill.stdout.contains("4 interfaces made"), "\(fill.output)")
        }, leftovers: { node in
            let status = try run(TestEnv.kangaroo, ["network", "status", "--json", confPath]).stdout
            let pods = ((try? JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])?["pods"] as? [Any])?.count ?? -1
            // The pool's free pairs stay (3 of 4 were taken, refilled by a
            // daemon only); the pods' pairs go.
            let pairs = try links(prefix: "kt41x")
            // Then the network goes (while its configuration still exists).
            let remove = try run(TestEnv.kangaroo, ["network", "remove", confPath])
            let table = try run("/usr/sbin/nft", ["list", "table", "ip", "kangaroo_kgt_pods"])
            return (pods == 0 ? [] : ["\(pods) pods in the network's state"]) + (pairs.count == 1 ? [] : ["interfaces \(pairs)"])
                + (remove.status == 0 ? [] : ["network remove: \(remove.output)"])
                + (try links(prefix: "kgtk0").isEmpty && table.status != 0 ? [] : ["the bridge or the nftables table outlived network remove"])
        })
        #expect(kangaroo.reach == ["pod to pod": "200", "node to pod": "200", "host port from the node": "200"], "\(kangaroo.reach)")
        #expect(reference.reach == kangaroo.reach, "reference \(reference.reach)")
        #expect(kangaroo.addresses == reference.addresses, "kangaroo:\n\(kangaroo.addresses)\nreference:\n\(reference.addresses)")
        #expect(kangaroo.routes == reference.routes, "kangaroo:\n\(kangaroo.routes)\nreference:\n\(reference.routes)")
        #expect(kangaroo.resolvConf == reference.resolvConf && kangaroo.resolvConf.contains("10.241.0.53"), "\(kangaroo.resolvConf) vs \(reference.resolvConf)")
        #expect(kangaroo.hostname == "net-a" && reference.hostname == "net-a")
    }
}
