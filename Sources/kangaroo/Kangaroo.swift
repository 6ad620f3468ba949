import ArgumentParser

/// `kangaroo`: the command-line interface of the Kangaroo node stack.

struct Kangaroo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kangaroo",
        abstract: "Serverless container node stack: lazy images, P2P distribution, a lean runtime.",
        version: "0.1.0",
        subcommands: [ImageCommand.self, RunCommand.self, Ps.self, Stop.self, Rm.self, NodeCommand.self, NetworkCommand.self, DiskCommand.self,
                      PeerCommand.self, TrackerCommand.self]
    )
}

/// `kangaroo image ...`: Kangaroo images (convert, inspect, check, unpack,
/// materialize, push, pull, list).
struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Convert, verify, move and unpack Kangaroo images.",
        subcommands: [Convert.self, Inspect.self, Check.self, Unpack.self, Materialize.self,
                      Push.self, Pull.self, List.self, Mount.self, Umount.self, Stats.self, Preheat.self]
    )
}
