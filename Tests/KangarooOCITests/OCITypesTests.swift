import Testing
@testable import KangarooOCI

@Suite struct OCITypesTests {
    static let dockerManifest = """
    {"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
     "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1469,
               "digest":"sha256:\(String(repeating: "1", count: 64))"},
     "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":29124,
                "digest":"sha256:\(String(repeating: "2", count: 64))","futureField":{"x":1}}],
     "somethingNew":true}
    """

    @Test func decodesDockerManifestTolerantly() throws {
        let m = try CanonicalJSON.decode(ImageManifest.self, from: Array(Self.dockerManifest.utf8), what: "test")
        #expect(m.schemaVersion == 2)
        #expect(m.mediaType == MediaTypes.dockerManifest)
        #expect(m.layers[0].size == 29124)
        #expect(MediaTypes.layerCompression(m.layers[0].mediaType) == .gzip)
    }

    @Test func decodesConfigWithUnknownFields() throws {
        let json = """
        {"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z","docker_version":"24",
         "config":{"Env":["PATH=/bin"],"Cmd":["bash"],"ExposedPorts":{"80/tcp":{}},"Labels":{"a":"b"},
                   "WorkingDir":"/srv","User":"1000:1000","StopSignal":"SIGTERM","Volumes":{"/data":{}},"Hostname":""},
         "rootfs":{"type":"layers","diff_ids":["sha256:\(String(repeating: "3", count: 64))"]},
         "history":[{"created_by":"/bin/sh -c #(nop) CMD","empty_layer":true}]}
        """
        let c = try CanonicalJSON.decode(ImageConfiguration.self, from: Array(json.utf8), what: "test")
        #expect(c.config?.cmd == ["bash"])
        #expect(c.config?.exposedPorts?.keys.sorted() == ["80/tcp"])
        #expect(c.config?.user == "1000:1000")
        #expect(c.rootfs.diffIDs.count == 1)
        #expect(c.history?.first?.emptyLayer == true)
        // Round trip through the canonical encoder keeps the known fields.
        let again = try CanonicalJSON.decode(ImageConfiguration.self, from: CanonicalJSON.encode(c), what: "again")
        #expect(again == c)
    }

    @Test func canonicalEncodingIsDeterministicAndSorted() throws {
        let d = Descriptor(mediaType: MediaTypes.layerZstd, digest: Digest.sha256(of: [1]), size: 1,
                           annotations: ["z": "1", "a": "2"], platform: .linuxAMD64)
        let a = try CanonicalJSON.encode(d)
        let b = try CanonicalJSON.encode(d)
        #expect(a == b)
        let s = String(decoding: a, as: UTF8.self)
        #expect(s.contains("application/vnd.oci.image.layer.v1.tar+zstd"), "slashes are not escaped: \(s)")
        #expect(s.hasPrefix(#"{"annotations":{"a":"2","z":"1"},"digest""#), "\(s)")
    }

    @Test func missingRequiredFieldNamesIt() {
        do {
            _ = try CanonicalJSON.decode(ImageManifest.self, from: Array(#"{"schemaVersion":2,"layers":[]}"#.utf8), what: "m")
            Issue.record("accepted")
        } catch {
            #expect(error.code == .invalidManifest)
            #expect(error.message.contains("config"))
        }
    }

    @Test(arguments: [
        (Platform(architecture: "arm64", os: "linux"), Platform(architecture: "arm64", os: "linux", variant: "v8"), true),
        (Platform(architecture: "arm64", os: "linux", variant: "v8"), Platform(architecture: "arm64", os: "linux"), true),
        (Platform(architecture: "arm", os: "linux", variant: "v7"), Platform(architecture: "arm", os: "linux", variant: "v6"), false),
        (Platform.linuxAMD64, Platform(architecture: "amd64", os: "windows"), false),
    ])
    func platformMatching(_ wanted: Platform, _ candidate: Platform, _ result: Bool) {
        #expect(wanted.matches(candidate) == result)
    }

    @Test(arguments: [
        (#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
         "bearer", ["realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull,push"]),
        (#"Basic realm="Registry Realm""#, "basic", ["realm": "Registry Realm"]),
        (#"Bearer realm=http://127.0.0.1:1/t, service=x"#, "bearer", ["realm": "http://127.0.0.1:1/t", "service": "x"]),
    ])
    func authChallenges(_ header: String, _ scheme: String, _ params: [String: String]) {
        let c = AuthChallenge.parse(header)
        #expect(c?.scheme == scheme)
        #expect(c?.parameters == params)
    }
}
