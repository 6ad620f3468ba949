import KangarooSystem
import Testing
@testable import KangarooNetwork

@Suite struct ConfigTests {
    @Test func defaultsAndDerivedNames() throws {
        let c = try NetworkConfig(text: #"{"cniVersion":"1.0.0","name":"pods","type":"kangaroo-cni","subnet":"10.9.3.7/24"}"#)
        #expect(c.subnet == IPv4Prefix("10.9.3.0/24"))
        #expect(c.gateway == IPv4("10.9.3.1"))
        #expect(c.slots == 2...254)
        #expect(c.table == "kangaroo_pods")
        #expect(c.hostName(17) == "kg17" && c.peerName(17) == "kg17p")
        #expect(c.directory == "/var/lib/kangaroo/network/pods")
    }

    @Test func conflistTakesThePluginAndTheListName() throws {
        let c = try NetworkConfig(text: #"{"cniVersion":"0.4.0","name":"list","plugins":[{"type":"loopback"},{"type":"kangaroo-cni","bridge":"br9"}]}"#)
        #expect(c.name == "list" && c.bridge == "br9" && c.cniVersion == "0.4.0")
    }

    @Test(arguments: [
        (#"{"name":"x","subnet":"10.0.0.0"}"#, "subnet"),
        (#"{"name":"x","subnet":"10.0.0.0/30"}"#, "prefix length"),
        (#"{"name":"x","bridge":"a-very-long-bridge-name"}"#, "bridge"),
        (#"{"name":"x","poolSize":"many"}"#, "poolSize"),
        (#"{"name":"x","mtu":10}"#, "mtu"),
        (#"{"subnet":"10.0.0.0/16"}"#, "name"),
        (#"{"name":"x","stateDir":"relative"}"#, "stateDir"),
        (#"{"name":"x","ifPrefix":"toolongprefix"}"#, "ifPrefix"),
        (#"[1,2]"#, "object"),
        (#"{"name":"x""#, "not JSON"),
    ])
    func badConfigurationsNameWhatIsWrong(text: String, word: String) {
        #expect {
            _ = try NetworkConfig(text: text)
        } throws: { error in
            String(describing: error).contains(word)
        }
    }
}

@Suite struct AddressTests {
    @Test func parsing() {
        #expect(IPv4("10.1.2.3")?.value == 0x0a01_0203)
        #expect(IPv4("10.1.2") == nil && IPv4("10.1.2.256") == nil && IPv4("1.2.3.4.5") == nil && IPv4("a.b.c.d") == nil)
        let p = IPv4Prefix("192.168.7.9/20")!
        #expect(p.network.description == "192.168.0.0" && p.size == 4096)
        #expect(p.contains(IPv4("192.168.15.255")!) && !p.contains(IPv4("192.168.16.0")!))
        #expect(IPv4Prefix("1.2.3.4/33") == nil)
    }
}

@Suite struct PoolStateTests {
    @Test func unusedNumbersGoRoundRobinAndEnd() {
        var s = PoolState()
        let range: ClosedRange<UInt32> = 2...5
        var got: [UInt32] = []
        while let n = s.unusedNumber(in: range) { got.append(n); s.slots[n] = Slot(number: n, state: .free) }
        #expect(got == [2, 3, 4, 5])
        s.slots[3] = nil
        #expect(s.unusedNumber(in: range) == 3)
        s.slots[3] = Slot(number: 3, state: .free)
        s.slots[2] = nil
        s.slots[4] = nil
        // After 3 the search goes on at 4, not back to 2.
        #expect(s.unusedNumber(in: range) == 4)
    }

    @Test func stateSurvivesItsFile() throws {
        var slot = Slot(number: 9, state: .attached)
        slot.containerID = "abc"
        slot.ifname = "eth0"
        slot.netns = "/run/netns/x"
        slot.ports = [PortMapping(hostPort: 8080, containerPort: 80, proto: "tcp")]
        var s = PoolState()
        s.slots[9] = slot
        s.slots[10] = Slot(number: 10, state: .free)
        s.cursor = 10
        let back = PoolState(try JSON.parse(s.json.serialized()))
        #expect(back == s)
        #expect(back.slot(container: "abc", ifname: "eth0")?.number == 9)
        #expect(back.slot(container: "abc", ifname: "eth1") == nil)
    }
}

@Suite struct PluginProtocolTests {
    let conf = #"{"cniVersion":"1.0.0","name":"unit","type":"kangaroo-cni","stateDir":"/nonexistent-kangaroo-test"}"#

    func error(_ out: CNIPlugin.Output) throws -> (code: Int, msg: String) {
        let j = try JSON.parse(out.stdout)
        return (j["code"]?.int ?? -1, j["msg"]?.string ?? "")
    }

    @Test func versionListsTheSpecVersions() throws {
        let out = CNIPlugin.run(environment: ["CNI_COMMAND": "VERSION"], stdin: #"{"cniVersion":"1.0.0"}"#)
        #expect(out.exitCode == 0)
        let j = try JSON.parse(out.stdout)
        #expect(j["supportedVersions"]?.array?.compactMap(\.string) == ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
    }

    @Test func malformedStdinIsDecodingError() throws {
        let out = CNIPlugin.run(environment: ["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "a", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"], stdin: "{nope")
        #expect(out.exitCode == 1)
        let e = try error(out)
        #expect(e.code == 6 && e.msg.contains("not JSON"))
    }

    @Test func missingEnvironmentNamesTheVariable() throws {
        for (env, word) in [(["CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"], "CNI_CONTAINERID"),
                            (["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "a", "CNI_NETNS": "/x"], "CNI_IFNAME"),
                            (["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "a", "CNI_IFNAME": "eth0"], "CNI_NETNS"),
                            (["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "a/../b", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"], "CNI_CONTAINERID"),
                            (["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "a", "CNI_IFNAME": "eth0/x", "CNI_NETNS": "/x"], "CNI_IFNAME"),
                            (["CNI_COMMAND": "FROB", "CNI_CONTAINERID": "a", "CNI_IFNAME": "eth0"], "FROB"),
                            ([:], "CNI_COMMAND")] {
            let out = CNIPlugin.run(environment: env, stdin: conf)
            let e = try error(out)
            #expect(out.exitCode == 1 && e.code == 4 && e.msg.contains(word), "\(env): \(e)")
        }
    }

    @Test func unsupportedVersionIsCode1() throws {
        let out = CNIPlugin.run(environment: ["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "a", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"],
                                stdin: #"{"cniVersion":"9.9.9","name":"unit","type":"kangaroo-cni"}"#)
        #expect(try error(out).code == 1)
    }

    @Test func portMappingsAreChecked() throws {
        let j = try JSON.parse(#"{"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"TCP"},{"HostPort":53,"ContainerPort":5353,"Protocol":"udp","HostIP":""}]}}"#)
        #expect(try CNIPlugin.portMappings(j) == [PortMapping(hostPort: 8080, containerPort: 80, proto: "tcp"), PortMapping(hostPort: 53, containerPort: 5353, proto: "udp")])
        for bad in [#"{"runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}"#,
                    #"{"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"sctp"}]}}"#,
                    #"{"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"10.0.0.1"}]}}"#] {
            #expect(throws: NetworkError.self) { try CNIPlugin.portMappings(try JSON.parse(bad)) }
        }
    }
}
