package plugboard.bench;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.connect.errors.RetriableException;

/**
 * The records this JVM's sink tasks finished, written to a file the
 * benchmark samples ({@code progress.file}) for the sinks whose output
 * cannot be counted from outside.
 */
final class Progress {
    private static final AtomicLong FINISHED = new AtomicLong();

    private Progress() {}

    /** Counts {@code records} as finished and writes the total to {@code file}, if any. */
    static void finished(Path file, int records) {
        FINISHED.addAndGet(records);
        if (file == null) {
            return;
        }
        // One writer at a time, writing the total as it is then: the file
        // never goes back to a smaller count.
        synchronized (FINISHED) {
            try {
                Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
                Files.writeString(tmp, Long.toString(FINISHED.get()));
                Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            } catch (java.io.IOException e) {
                throw new RetriableException(e);
            }
        }
    }
}
