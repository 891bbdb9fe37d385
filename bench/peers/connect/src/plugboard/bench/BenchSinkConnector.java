package plugboard.bench;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import org.apache.kafka.connect.sink.SinkConnector;

/**
 * What the benchmark's sink connectors share: every task gets the
 * connector's own config.
 */
abstract class BenchSinkConnector extends SinkConnector {
    protected Map<String, String> props;

    @Override
    public void start(Map<String, String> props) {
        this.props = props;
    }

    @Override
    public List<Map<String, String>> taskConfigs(int maxTasks) {
        List<Map<String, String>> configs = new ArrayList<>();
        for (int i = 0; i < maxTasks; i++) {
            configs.add(props);
        }
        return configs;
    }

    @Override
    public void stop() {}

    @Override
    public String version() {
        return "1";
    }
}
