package plugboard.bench;

import java.util.Collection;
import java.util.Map;

import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.connect.connector.Task;
import org.apache.kafka.connect.sink.SinkRecord;
import org.apache.kafka.connect.sink.SinkTask;

/**
 * The decode job's sink: Connect ships none that discards, so this one
 * counts what it is handed ({@code progress.file}, see {@link Progress})
 * and drops it. The decoding is the converter's.
 */
public class DiscardSinkConnector extends BenchSinkConnector {
    @Override
    public Class<? extends Task> taskClass() {
        return DiscardTask.class;
    }

    @Override
    public ConfigDef config() {
        return new ConfigDef().define("progress.file", ConfigDef.Type.STRING, null, ConfigDef.Importance.LOW,
                "Where the records handed to the tasks are counted");
    }

    /** Counts each batch and drops it. */
    public static class DiscardTask extends SinkTask {
        private java.nio.file.Path progress;

        @Override
        public void start(Map<String, String> props) {
            String file = props.get("progress.file");
            progress = file == null ? null : java.nio.file.Path.of(file);
        }

        @Override
        public void put(Collection<SinkRecord> records) {
            if (!records.isEmpty()) {
                Progress.finished(progress, records.size());
            }
        }

        @Override
        public void stop() {}

        @Override
        public String version() {
            return "1";
        }
    }
}
