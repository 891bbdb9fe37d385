package plugboard.bench;

import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.connect.connector.Task;

/**
 * A minimal HTTP sink for the peer benchmark: every batch Connect hands a
 * task becomes one POST of HubSpot's batch upsert to crm-example. No such
 * connector is published on Maven Central, so the benchmark brings its own.
 * Config: {@code crm.url} (the upsert URL) and {@code crm.sync}: false
 * (the default) posts each record's position ({@link HttpSinkTask}); true
 * decodes the bookings and does crm-sync's work ({@link BookingSyncTask}).
 */
public class HttpSinkConnector extends BenchSinkConnector {
    @Override
    public Class<? extends Task> taskClass() {
        return Boolean.parseBoolean(props.get("crm.sync")) ? BookingSyncTask.class : HttpSinkTask.class;
    }

    @Override
    public ConfigDef config() {
        return new ConfigDef().define("crm.url", ConfigDef.Type.STRING, ConfigDef.Importance.HIGH,
                "The crm-example batch upsert URL")
            .define("crm.sync", ConfigDef.Type.BOOLEAN, false, ConfigDef.Importance.MEDIUM,
                "Decode the bookings, read the versions the CRM holds and upsert the newer ones")
            .define("progress.file", ConfigDef.Type.STRING, null, ConfigDef.Importance.LOW,
                "Where BookingSyncTask counts the events it finished");
    }
}
