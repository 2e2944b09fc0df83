import org.flywaydb.core.Flyway;

/**
 * Applies the migrations of a folder with Flyway: {@code java Migrate JDBC_URL USER PASSWORD DIR}.
 * Prints how many it applied and the milliseconds Flyway itself took (the JVM's start is not in
 * that figure; the benchmark times the whole process too).
 */
public class Migrate {
    public static void main(String[] args) {
        long started = System.nanoTime();
        var result = Flyway.configure()
                .dataSource(args[0], args[1], args[2])
                .locations("filesystem:" + args[3])
                .load()
                .migrate();
        long millis = (System.nanoTime() - started) / 1_000_000;
        System.out.println(result.migrationsExecuted + " applied in " + millis + " ms");
    }
}
