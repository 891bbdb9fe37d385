package plugboard.bench;

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

import booking.v1.Booking.BookingEvent;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Timestamp;
import org.apache.kafka.connect.errors.DataException;
import org.apache.kafka.connect.errors.RetriableException;
import org.apache.kafka.connect.sink.SinkRecord;
import org.apache.kafka.connect.sink.SinkTask;

/**
 * The work crm-sync does, written as a Connect user would: each value
 * (ByteArrayConverter) is decoded as a booking.v1.BookingEvent, the newest
 * version of each booking in the batch is kept, HubSpot's {@code batch/read}
 * asks the CRM which versions it holds, and {@code batch/upsert} writes the
 * bookings that are newer, with the same eleven properties crm-sync writes.
 * A replay or a redelivery changes nothing, as with crm-sync.
 * Config: {@code crm.url} (the upsert URL; {@code batch/read} sits beside
 * it), at most 100 inputs per request (crm-example's limit), and
 * {@code progress.file}: where the events this JVM's tasks finished are
 * counted, since the CRM's upsert count no longer is one (a batch writes a
 * booking once, and skips what the CRM holds).
 */
public class BookingSyncTask extends SinkTask {
    private static final int BATCH_LIMIT = 100;
    private Path progress;
    private final ObjectMapper json = new ObjectMapper();
    private HttpClient client;
    private URI upsert;
    private URI read;

    @Override
    public void start(Map<String, String> props) {
        upsert = URI.create(props.get("crm.url"));
        read = URI.create(props.get("crm.url").replaceFirst("batch/upsert$", "batch/read"));
        client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
        String file = props.get("progress.file");
        progress = file == null ? null : Path.of(file);
    }

    @Override
    public void put(Collection<SinkRecord> records) {
        if (records.isEmpty()) {
            return;
        }
        Map<String, BookingEvent> newest = new LinkedHashMap<>();
        for (SinkRecord r : records) {
            if (r.value() == null) {
                continue;
            }
            BookingEvent e;
            try {
                e = BookingEvent.parseFrom((byte[]) r.value());
            } catch (InvalidProtocolBufferException ex) {
                throw new DataException("not a booking.v1.BookingEvent at offset " + r.kafkaOffset(), ex);
            }
            newest.merge(e.getBookingId(), e, (held, next) -> next.getVersion() > held.getVersion() ? next : held);
        }
        List<BookingEvent> events = new ArrayList<>(newest.values());
        for (int from = 0; from < events.size(); from += BATCH_LIMIT) {
            List<BookingEvent> chunk = events.subList(from, Math.min(events.size(), from + BATCH_LIMIT));
            Map<String, Long> held = readVersions(chunk);
            ArrayNode inputs = json.createArrayNode();
            for (BookingEvent e : chunk) {
                Long version = held.get(e.getBookingId());
                if (version != null && version >= e.getVersion()) {
                    continue;
                }
                ObjectNode input = inputs.addObject();
                input.put("idProperty", "booking_id");
                input.put("id", e.getBookingId());
                input.set("properties", properties(e));
            }
            if (!inputs.isEmpty()) {
                ObjectNode body = json.createObjectNode();
                body.set("inputs", inputs);
                post(upsert, body);
            }
        }
        Progress.finished(progress, records.size());
    }

    private Map<String, Long> readVersions(List<BookingEvent> chunk) {
        ObjectNode body = json.createObjectNode();
        body.put("idProperty", "booking_id");
        body.putArray("properties").add("booking_id").add("booking_version");
        ArrayNode inputs = body.putArray("inputs");
        for (BookingEvent e : chunk) {
            inputs.addObject().put("id", e.getBookingId());
        }
        Map<String, Long> held = new HashMap<>();
        for (JsonNode result : post(read, body).path("results")) {
            JsonNode p = result.path("properties");
            try {
                held.put(p.path("booking_id").asText(), Long.parseUnsignedLong(p.path("booking_version").asText()));
            } catch (NumberFormatException ignored) {
                // a record without a version is overwritten
            }
        }
        return held;
    }

    /** The CRM record of a booking, as crm-sync writes it. HubSpot property values are strings. */
    private ObjectNode properties(BookingEvent e) {
        ObjectNode p = json.createObjectNode();
        p.put("booking_id", e.getBookingId());
        p.put("booking_state", e.getState().name().replaceFirst("^BOOKING_STATE_", "").toLowerCase(Locale.ROOT));
        p.put("booking_version", Long.toUnsignedString(e.getVersion()));
        p.put("customer_name", e.getCustomer().getName());
        p.put("customer_email", e.getCustomer().getEmail());
        p.put("garage_name", e.getGarage().getName());
        p.put("service_code", e.getService().getServiceCode());
        p.put("price_amount_minor", e.hasPrice() ? Long.toString(e.getPrice().getAmountMinor()) : "");
        p.put("price_currency", e.getPrice().getCurrencyCode());
        p.put("appointment_start", e.hasAppointmentStart() ? rfc3339(e.getAppointmentStart()) : "");
        p.put("last_event_id", e.getEventId());
        return p;
    }

    private static String rfc3339(Timestamp t) {
        return Instant.ofEpochSecond(t.getSeconds(), t.getNanos()).toString();
    }

    /** POSTs {@code body}; a 5xx, 408 or 429 or a failed connection is retried by Connect. */
    private JsonNode post(URI url, JsonNode body) {
        try {
            HttpRequest request = HttpRequest.newBuilder(url)
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .POST(HttpRequest.BodyPublishers.ofByteArray(json.writeValueAsBytes(body)))
                .build();
            HttpResponse<byte[]> response = client.send(request, HttpResponse.BodyHandlers.ofByteArray());
            int status = response.statusCode();
            if (status / 100 == 2) {
                return json.readTree(response.body());
            }
            String text = new String(response.body(), java.nio.charset.StandardCharsets.UTF_8);
            if (status == 408 || status == 429 || status >= 500) {
                throw new RetriableException("POST " + url.getPath() + ": HTTP " + status + ": " + text);
            }
            throw new DataException("POST " + url.getPath() + ": HTTP " + status + ": " + text);
        } catch (java.io.IOException e) {
            throw new RetriableException(e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new RetriableException(e);
        }
    }

    @Override
    public void stop() {}

    @Override
    public String version() {
        return "1";
    }
}
