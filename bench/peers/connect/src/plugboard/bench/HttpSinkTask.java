package plugboard.bench;

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Collection;
import java.util.Map;

import org.apache.kafka.connect.errors.RetriableException;
import org.apache.kafka.connect.sink.SinkRecord;
import org.apache.kafka.connect.sink.SinkTask;

/**
 * Posts each batch as {"inputs":[{"idProperty":"booking_id","id":KEY,
 * "properties":{...}}]}. With ByteArrayConverter it cannot read the
 * protobuf value, so the properties are the record's position and size:
 * less work than decoding the booking.
 */
public class HttpSinkTask extends SinkTask {
    private HttpClient client;
    private URI url;

    @Override
    public void start(Map<String, String> props) {
        url = URI.create(props.get("crm.url"));
        client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
    }

    @Override
    public void put(Collection<SinkRecord> records) {
        if (records.isEmpty()) {
            return;
        }
        StringBuilder body = new StringBuilder(records.size() * 160);
        body.append("{\"inputs\":[");
        boolean first = true;
        for (SinkRecord r : records) {
            if (!first) {
                body.append(',');
            }
            first = false;
            Object key = r.key();
            String id = key instanceof byte[] ? new String((byte[]) key, StandardCharsets.UTF_8) : String.valueOf(key);
            byte[] value = (byte[]) r.value();
            body.append("{\"idProperty\":\"booking_id\",\"id\":\"").append(escape(id))
                .append("\",\"properties\":{\"kafka_partition\":\"").append(r.kafkaPartition())
                .append("\",\"kafka_offset\":\"").append(r.kafkaOffset())
                .append("\",\"payload_bytes\":\"").append(value == null ? 0 : value.length)
                .append("\"}}");
        }
        body.append("]}");
        HttpRequest request = HttpRequest.newBuilder(url)
            .header("content-type", "application/json")
            .POST(HttpRequest.BodyPublishers.ofString(body.toString()))
            .build();
        try {
            HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
            if (response.statusCode() / 100 != 2) {
                throw new RetriableException("HTTP " + response.statusCode() + ": " + response.body());
            }
        } catch (java.io.IOException e) {
            throw new RetriableException(e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new RetriableException(e);
        }
    }

    private static String escape(String s) {
        return s.replace("\\", "\\\\").replace("\"", "\\\"");
    }

    @Override
    public void stop() {}

    @Override
    public String version() {
        return "1";
    }
}
