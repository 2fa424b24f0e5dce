package outrigger;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A fresh outrigger for the suite: port 0 on 127.0.0.1, a new SQLite file, ready once it logs
 * "listening addr=ip:port". Its output goes to a log file for the whole run.
 */
final class Sidecar implements AutoCloseable {
    private static final Pattern LISTENING = Pattern.compile("listening addr=([^\\s\",]+)");

    final String host;
    final int port;
    private final Process process;
    private final Path dir;

    private Sidecar(Process process, Path dir, String address) {
        this.process = process;
        this.dir = dir;
        int colon = address.lastIndexOf(':');
        this.host = address.substring(0, colon);
        this.port = Integer.parseInt(address.substring(colon + 1));
    }

    static Path binary() {
        String override = System.getenv("OUTRIGGER_BIN");
        if (override != null && !override.isEmpty()) {
            return Path.of(override);
        }
        for (String profile : new String[] {"release", "debug"}) {
            Path candidate = Path.of("..", "..", "target", profile, "outrigger").toAbsolutePath().normalize();
            if (Files.isRegularFile(candidate)) {
                return candidate;
            }
        }
        throw new IllegalStateException("no outrigger binary: run `cargo build --release` or set OUTRIGGER_BIN");
    }

    static Sidecar start(Path log) throws Exception {
        Path dir = Files.createTempDirectory("outrigger-java-");
        Files.createDirectories(log.getParent());
        ProcessBuilder pb = new ProcessBuilder(binary().toString(), "--host", "127.0.0.1", "--port", "0",
                "--database-url", "sqlite://" + dir.resolve("hub.db"));
        pb.environment().put("NO_COLOR", "1");
        pb.redirectErrorStream(true);
        Process process = pb.start();
        CompletableFuture<String> address = new CompletableFuture<>();
        Thread drain = new Thread(() -> {
            try (BufferedReader in = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
                 PrintWriter out = new PrintWriter(Files.newBufferedWriter(log, StandardCharsets.UTF_8,
                         java.nio.file.StandardOpenOption.CREATE, java.nio.file.StandardOpenOption.APPEND), true)) {
                String line;
                while ((line = in.readLine()) != null) {
                    out.println(line);
                    Matcher m = LISTENING.matcher(line);
                    if (!address.isDone() && m.find()) {
                        address.complete(m.group(1));
                    }
                }
            } catch (IOException e) {
                address.completeExceptionally(e);
            }
            address.completeExceptionally(new IllegalStateException("outrigger exited before listening; see " + log));
        }, "outrigger-log");
        drain.setDaemon(true);
        drain.start();
        try {
            return new Sidecar(process, dir, address.get(30, TimeUnit.SECONDS));
        } catch (Exception e) {
            process.destroyForcibly();
            throw e;
        }
    }

    @Override
    public void close() throws Exception {
        process.destroy(); // SIGTERM: a clean shutdown
        if (!process.waitFor(10, TimeUnit.SECONDS)) {
            process.destroyForcibly().waitFor();
        }
        try (var files = Files.walk(dir)) {
            files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        }
    }
}
