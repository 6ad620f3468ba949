import Foundation
import SystemPackage

/// A temporary directory /tmp/kangaroo-test-oci-XXXX removed by `remove()`.
struct TempDir {
    let path: String
    init(_ label: String = "oci") throws {
        var template = Array("/tmp/kangaroo-test-\(label)-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw POSIXError(.EIO) }
        path = String(cString: p)
    }
    var filePath: FilePath { FilePath(path) }
    func file(_ name: String) -> String { path + "/" + name }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

struct CommandFailed: Error, CustomStringConvertible {
    let description: String
}

/// Runs a program, returns stdout; throws with stderr on a non-zero exit.
@discardableResult
func run(_ executable: String, _ arguments: [String], cwd: String? = nil, stdin: Data? = nil,
         environment: [String: String]? = nil) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let cwd { process.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    if let environment { process.environment = environment }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let input = Pipe()
    process.standardInput = stdin == nil ? FileHandle.nullDevice : input
    try process.run()
    if let stdin {
        input.fileHandleForWriting.write(stdin)
        try? input.fileHandleForWriting.close()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw CommandFailed(description: "\(executable) \(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(String(decoding: errData, as: UTF8.self))")
    }
    return String(decoding: outData, as: UTF8.self)
}

/// Runs a shell script with `set -e` in `cwd`.
@discardableResult
func sh(_ script: String, cwd: String) throws -> String {
    try run("/bin/bash", ["-euo", "pipefail", "-c", script], cwd: cwd)
}

/// Runs a Python script (argv[1...] = args).
@discardableResult
func python(_ script: String, _ args: [String] = [], cwd: String) throws -> String {
    try run("/usr/bin/python3", ["-c", script] + args, cwd: cwd)
}

func readBytes(_ path: String) throws -> [UInt8] {
    guard let data = FileManager.default.contents(atPath: path) else { throw POSIXError(.ENOENT) }
    return [UInt8](data)
}

let integrationEnabled = ProcessInfo.processInfo.environment["KANGAROO_INTEGRATION"] == "1"
