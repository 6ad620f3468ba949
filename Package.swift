// swift-tools-version:6.1
import PackageDescription

// The executables are started per container (containerd runs the shim
// binary for every task, the node daemon starts `kangaroo image mount` per
// image, kangaroo run starts the runtime) and per `kangaroo` command: linked
// with the Swift runtime and Foundation inside (no dynamic libswiftCore,
// Foundation and its ICU to load and relocate: measured here, the shim's
// start fell from 10.6 to 4.1 ms, as fast as runc's Go shim, and a
// `kangaroo` command's from 23 to 12 ms), so that the README's release
// build is the fast one.
// (Compiled with the flag too: the static Foundation module's link entries
// bring CoreFoundation and ICU along.)
let staticSwift: [LinkerSetting] = [.unsafeFlags(["-static-stdlib"], .when(configuration: .release))]
let staticSwiftCompile: [SwiftSetting] = [.unsafeFlags(["-static-stdlib"], .when(configuration: .release))]

let package = Package(
    name: "kangaroo",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "kangaroo", targets: ["kangaroo"]),
        .executable(name: "kangaroo-runtime", targets: ["kangaroo-runtime"]),
        .executable(name: "containerd-shim-kangaroo-v2", targets: ["containerd-shim-kangaroo-v2"]),
        .executable(name: "kangaroo-cni", targets: ["kangaroo-cni"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // C shims and Debian C libraries (system-library targets).
        .target(name: "CKangaroo"),
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),

        // Libraries.
        .target(name: "KangarooSystem", dependencies: [
            "CKangaroo",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "KangarooOCI", dependencies: [
            "CArchive",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "KangarooImage", dependencies: ["KangarooOCI", "CZstd", "CLZ4"]),
        .target(name: "KangarooFUSE", dependencies: [
            "KangarooSystem", "CKangaroo",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "KangarooChunks", dependencies: [
            "KangarooImage", "KangarooOCI", "KangarooSystem",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "KangarooP2P", dependencies: [
            "KangarooChunks", "KangarooOCI",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "KangarooLazyFS", dependencies: ["KangarooChunks", "KangarooImage", "KangarooFUSE", "KangarooSystem", "CKangaroo"]),
        .target(name: "KangarooRuntime", dependencies: ["KangarooSystem", "CSeccomp"]),
        // The node's pod network: rtnetlink, the bridge and nftables table,
        // the pool of veth pairs, the CNI plugin protocol.
        .target(name: "KangarooNetwork", dependencies: [
            "KangarooSystem", "CKangaroo",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The node's pools other than the network's: sandbox disks (loop
        // devices over regions of one node file).
        .target(name: "KangarooNode", dependencies: [
            "KangarooSystem", "CKangaroo",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // containerd's shim v2, events, snapshots and ttrpc messages
        // (generated once by scripts/gen-protos.sh, committed).
        .target(name: "ContainerdAPI", dependencies: [
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ], exclude: ["Protos"]),
        // ttrpc on swift-nio and the shim v2 Task service.
        .target(name: "KangarooShim", dependencies: [
            "ContainerdAPI", "KangarooRuntime", "KangarooSystem", "KangarooNode",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // containerd's remote snapshotter (gRPC Snapshots service): overlay
        // snapshots, and Kangaroo image layers answered by a lazy mount.
        .target(name: "KangarooSnapshotter", dependencies: [
            "ContainerdAPI", "KangarooSystem", "KangarooLazyFS",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "GRPCCore", package: "grpc-swift-2"),
            .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
            .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // Executables.
        .executableTarget(name: "kangaroo", dependencies: [
            "KangarooOCI", "KangarooImage", "KangarooChunks", "KangarooP2P", "KangarooLazyFS", "KangarooSystem", "KangarooShim", "KangarooSnapshotter",
            "KangarooNetwork", "KangarooNode",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: staticSwiftCompile, linkerSettings: staticSwift),
        // Run by containerd per task: no Foundation, linked fully static
        // (as kangaroo-cni).
        .executableTarget(name: "containerd-shim-kangaroo-v2", dependencies: ["KangarooRuntime", "KangarooSystem"],
                          swiftSettings: staticSwiftCompile,
                          linkerSettings: [.unsafeFlags(["-static-executable"], .when(configuration: .release))]),
        // Run by containerd's CRI plugin per pod: no Foundation, no logging.
        // Linked fully static (no dynamic loader: a third of its start was
        // ld.so relocating libstdc++ and the runtime).
        .executableTarget(name: "kangaroo-cni", dependencies: ["KangarooNetwork"], swiftSettings: staticSwiftCompile,
                          linkerSettings: [.unsafeFlags(["-static-executable"], .when(configuration: .release))]),
        .executableTarget(name: "kangaroo-runtime", dependencies: ["KangarooRuntime"], swiftSettings: staticSwiftCompile, linkerSettings: staticSwift),

        // Tests (Swift Testing). IntegrationTests need root, the kernel and
        // the tools scripts/test-deps.sh installs; they skip themselves
        // unless KANGAROO_INTEGRATION=1.
        .testTarget(name: "KangarooSystemTests", dependencies: ["KangarooSystem"]),
        .testTarget(name: "KangarooOCITests", dependencies: ["KangarooOCI", "KangarooTestSupport"]),
        .testTarget(name: "KangarooImageTests", dependencies: ["KangarooImage"]),
        .testTarget(name: "KangarooFUSETests", dependencies: ["KangarooFUSE"]),
        .testTarget(name: "KangarooLazyFSTests", dependencies: ["KangarooLazyFS", "KangarooTestSupport"]),
        .testTarget(name: "KangarooRuntimeTests", dependencies: ["KangarooRuntime", "KangarooSystem", "KangarooTestSupport"]),
        .testTarget(name: "KangarooShimTests", dependencies: ["ContainerdAPI", "KangarooNode", "KangarooShim", "KangarooSystem", "KangarooTestSupport"]),
        .testTarget(name: "KangarooNetworkTests", dependencies: ["KangarooNetwork", "KangarooSystem"]),
        .testTarget(name: "KangarooSnapshotterTests", dependencies: ["ContainerdAPI", "KangarooSnapshotter"]),
        .testTarget(name: "IntegrationTests", dependencies: ["KangarooOCI", "KangarooImage", "KangarooSystem", "KangarooTestSupport"]),
        // Shared by the test targets that drive the CLI: command runner, temporary
        // directories, a docker-registry on 127.0.0.1, tree comparison.
        .target(name: "KangarooTestSupport", path: "Tests/KangarooTestSupport"),
    ]
)
