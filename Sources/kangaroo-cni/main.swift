#if canImport(Glibc)
import Glibc
#endif
import KangarooNetwork

// kangaroo-cni: the CNI plugin of the node's pod network (docs/NETWORK.md).
// The runtime (containerd's CRI plugin) runs it once per ADD, CHECK or DEL;
// everything it does is in KangarooNetwork's CNIPlugin.

var environment: [String: String] = [:]
var entry = environ
while let p = entry.pointee {
    let s = String(cString: p)
    if let eq = s.firstIndex(of: "=") { environment[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
    entry += 1
}

if CommandLine.arguments.count > 1 && environment["CNI_COMMAND"] == nil {
    let usage = "kangaroo-cni: a CNI plugin, run by a container runtime with CNI_COMMAND (ADD, DEL, CHECK, VERSION) and the network configuration on stdin; see docs/NETWORK.md\n"
    _ = usage.withCString { write(2, $0, strlen($0)) }
    exit(2)
}

var input: [UInt8] = []
var buffer = [UInt8](repeating: 0, count: 65536)
while true {
    let n = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
    if n < 0 && errno == EINTR { continue }
    if n <= 0 { break }
    input += buffer[0..<n]
}

let output = CNIPlugin.run(environment: environment, stdin: String(decoding: input, as: UTF8.self))
let text = Array(output.stdout.utf8)
var off = 0
while off < text.count {
    let n = text.withUnsafeBytes { write(1, $0.baseAddress! + off, $0.count - off) }
    if n < 0 && errno == EINTR { continue }
    if n <= 0 { break }
    off += n
}
exit(output.exitCode)
