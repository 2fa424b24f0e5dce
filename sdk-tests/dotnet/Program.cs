// Outrigger scenarios for the .NET SDK (Microsoft.DurableTask.Client.Grpc / Worker.Grpc): a
// client and filtered workers point at a running sidecar (OUTRIGGER_ADDRESS, default
// localhost:4001) and run the core patterns and entities. One line per scenario, then
// "N passed, N failed"; the exit code is 1 when anything failed.

using System.Diagnostics;
using Microsoft.DurableTask;
using Microsoft.DurableTask.Client;
using Microsoft.DurableTask.Client.Entities;
using Microsoft.DurableTask.Entities;
using Microsoft.DurableTask.Worker;
using Microsoft.DurableTask.Worker.Grpc.Internal;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

string address = Environment.GetEnvironmentVariable("OUTRIGGER_ADDRESS") is { Length: > 0 } configured
    ? configured
    : "localhost:4001";
if (!address.Contains("://", StringComparison.Ordinal))
{
    address = "http://" + address;
}

// Instance ids and entity keys carry this, so runs against one database never collide.
string run = Guid.NewGuid().ToString("N")[..8];
TimeSpan scenarioTimeout = TimeSpan.FromSeconds(90);

// Worker A hosts everything but "OnlyB"; worker B (started by its scenario) hosts only "OnlyB"
// and its activity. Both announce work-item filters generated from what they register.
using IHost hostA = BuildHost(address, withClient: true, RegisterMain);
await hostA.StartAsync();
DurableTaskClient client = hostA.Services.GetRequiredService<DurableTaskClient>();

var scenarios = new List<(string Name, Func<CancellationToken, Task> Body)>
{
    ("activity chain", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("Chain", new[] { "Tokyo", "Seattle", "London" });
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        List<string>? greetings = done.ReadOutputAs<List<string>>();
        Expect(greetings is not null && greetings.SequenceEqual(new[] { "Hello, Tokyo!", "Hello, Seattle!", "Hello, London!" }),
            $"output {done.SerializedOutput}");
    }),

    ("fan-out/fan-in", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("FanOut", 20);
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        Equal(2870, done.ReadOutputAs<int>(), "sum of the squares of 1..20");
    }),

    ("sub-orchestrations", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("Parent", 3);
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        Equal(17, done.ReadOutputAs<int>(), "sum of the children's (i*i + 1)");
    }),

    ("durable timer", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("Timer", 1);
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        double elapsed = done.ReadOutputAs<double>();
        Expect(elapsed >= 1000, $"orchestration time moved {elapsed} ms over a 1 s timer");
    }),

    ("external event, and its timeout", async ct =>
    {
        string answered = await client.ScheduleNewOrchestrationInstanceAsync("Approval", 60);
        string unanswered = await client.ScheduleNewOrchestrationInstanceAsync("Approval", 1);
        await client.WaitForInstanceStartAsync(answered, ct);
        await client.RaiseEventAsync(answered, "approval", "yes");
        OrchestrationMetadata done = await Finished(answered, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        Equal("approved: yes", done.ReadOutputAs<string>(), "answered output");
        done = await Finished(unanswered, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        Equal("timed out", done.ReadOutputAs<string>(), "unanswered output");
    }),

    ("continue-as-new", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("CountUp", 0);
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        Equal(5, done.ReadOutputAs<int>(), "the count after five generations");
    }),

    ("terminate", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("WaitForever");
        await client.WaitForInstanceStartAsync(id, ct);
        await client.TerminateInstanceAsync(id, new TerminateInstanceOptions(Output: "stopped"), ct);
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Terminated);
        Equal("stopped", done.ReadOutputAs<string>(), "termination output");
    }),

    ("suspend and resume", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("Approval", 60);
        await client.WaitForInstanceStartAsync(id, ct);
        await client.SuspendInstanceAsync(id, "paused by the scenario", ct);
        await Until(() => client.GetInstanceAsync(id, ct), m => m?.RuntimeStatus == OrchestrationRuntimeStatus.Suspended, ct);
        await client.RaiseEventAsync(id, "approval", "later");
        OrchestrationMetadata? meanwhile = await client.GetInstanceAsync(id, ct);
        Equal(OrchestrationRuntimeStatus.Suspended, meanwhile?.RuntimeStatus, "status after an event while suspended");
        await client.ResumeInstanceAsync(id, "resumed by the scenario", ct);
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        Equal("approved: later", done.ReadOutputAs<string>(), "the event kept while suspended");
    }),

    ("failure caught by the orchestration", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("Caught", "card declined");
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        Equal("caught System.InvalidOperationException: card declined", done.ReadOutputAs<string>(), "output");
    }),

    ("uncaught failure", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("Uncaught", "backend down");
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Failed);
        Expect(done.FailureDetails is not null, "failure details of a failed instance");
        var chain = new List<TaskFailureDetails>();
        for (TaskFailureDetails? f = done.FailureDetails; f is not null; f = f.InnerFailure)
        {
            chain.Add(f);
        }

        Expect(chain.Any(f => f.ErrorType == "System.InvalidOperationException" && f.ErrorMessage.Contains("backend down")),
            $"the activity's exception in the failure chain: {string.Join(" <- ", chain)}");
        OrchestrationMetadata? bare = await client.GetInstanceAsync(id, getInputsAndOutputs: false, ct);
        Expect(bare is not null && bare.FailureDetails is null && bare.SerializedInput is null,
            "no failure details or input when inputs and outputs are not asked for");
    }),

    ("custom status", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("Status");
        OrchestrationMetadata? waiting = await Until(
            () => client.GetInstanceAsync(id, getInputsAndOutputs: true, ct),
            m => m?.SerializedCustomStatus is not null,
            ct);
        Equal("waiting", waiting!.ReadCustomStatusAs<string>(), "custom status while waiting");
        await client.RaiseEventAsync(id, "go", "now");
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        Equal("done: now", done.ReadCustomStatusAs<string>(), "final custom status");
    }),

    ("purge", async ct =>
    {
        string single = await client.ScheduleNewOrchestrationInstanceAsync("Chain", new[] { "Oslo" });
        ExpectStatus(await Finished(single, ct), OrchestrationRuntimeStatus.Completed);
        PurgeResult purged = await client.PurgeInstanceAsync(single, ct);
        Equal(1, purged.PurgedInstanceCount, "instances purged by id");
        Expect(await client.GetInstanceAsync(single, ct) is null, "a purged instance is gone");

        DateTimeOffset from = DateTimeOffset.UtcNow;
        var ids = new List<string>();
        for (int i = 0; i < 3; i++)
        {
            ids.Add(await client.ScheduleNewOrchestrationInstanceAsync("Chain", new[] { $"Bergen {i}" }));
        }

        foreach (string id in ids)
        {
            ExpectStatus(await Finished(id, ct), OrchestrationRuntimeStatus.Completed);
        }

        var filter = new PurgeInstancesFilter(
            CreatedFrom: from,
            CreatedTo: DateTimeOffset.UtcNow.AddSeconds(1),
            Statuses: new[] { OrchestrationRuntimeStatus.Completed });
        purged = await client.PurgeAllInstancesAsync(filter, ct);
        Equal(3, purged.PurgedInstanceCount, "instances purged by filter");
        foreach (string id in ids)
        {
            Expect(await client.GetInstanceAsync(id, ct) is null, $"{id} is gone");
        }
    }),

    ("paged queries", async ct =>
    {
        string prefix = $"{run}-page-";
        var ids = new List<string>();
        for (int i = 0; i < 7; i++)
        {
            ids.Add(await client.ScheduleNewOrchestrationInstanceAsync(
                "Chain", new[] { $"Page {i}" }, new StartOrchestrationOptions(InstanceId: prefix + i)));
        }

        foreach (string id in ids)
        {
            ExpectStatus(await Finished(id, ct), OrchestrationRuntimeStatus.Completed);
        }

        var sizes = new List<int>();
        var seen = new HashSet<string>();
        await foreach (Page<OrchestrationMetadata> page in client
            .GetAllInstancesAsync(new OrchestrationQuery(InstanceIdPrefix: prefix, PageSize: 3))
            .AsPages())
        {
            sizes.Add(page.Values.Count);
            foreach (OrchestrationMetadata m in page.Values)
            {
                Expect(seen.Add(m.InstanceId), $"{m.InstanceId} appears on two pages");
                Equal(OrchestrationRuntimeStatus.Completed, m.RuntimeStatus, $"status of {m.InstanceId}");
            }
        }

        Equal("3,3,1", string.Join(",", sizes), "page sizes");
        Expect(seen.SetEquals(ids), "every instance, once");

        int running = 0;
        await foreach (OrchestrationMetadata m in client.GetAllInstancesAsync(new OrchestrationQuery(
            InstanceIdPrefix: prefix, Statuses: new[] { OrchestrationRuntimeStatus.Running })))
        {
            running++;
        }

        Equal(0, running, "running instances under the prefix");
    }),

    ("scheduled start", async ct =>
    {
        DateTimeOffset startAt = DateTimeOffset.UtcNow.AddSeconds(2);
        string id = await client.ScheduleNewOrchestrationInstanceAsync(
            "WhenAmI", new StartOrchestrationOptions(StartAt: startAt), ct);
        OrchestrationMetadata? pending = await client.GetInstanceAsync(id, ct);
        Equal(OrchestrationRuntimeStatus.Pending, pending?.RuntimeStatus, "status before the start time");
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        DateTime ranAt = done.ReadOutputAs<DateTime>();
        // The sidecar keeps milliseconds, so the start time is compared at that precision.
        Expect(ranAt.ToUniversalTime() >= startAt.UtcDateTime.AddMilliseconds(-1),
            $"ran at {ranAt:O}, scheduled for {startAt.UtcDateTime:O}");
    }),

    ("wait on a child not yet created", async ct =>
    {
        string childId = $"{run}-late-child";
        string parent = await client.ScheduleNewOrchestrationInstanceAsync("LateParent", childId);
        // The parent creates the child only after a timer: both waits begin before it exists.
        Task<OrchestrationMetadata> started = client.WaitForInstanceStartAsync(childId, ct);
        Task<OrchestrationMetadata> finished = client.WaitForInstanceCompletionAsync(childId, getInputsAndOutputs: true, ct);
        OrchestrationMetadata child = await finished;
        Equal(childId, (await started).InstanceId, "the started child");
        ExpectStatus(child, OrchestrationRuntimeStatus.Completed);
        Equal(26, child.ReadOutputAs<int>(), "child output");
        Expect(child.Tags.TryGetValue("tag1", out string? tag) && tag == "value1", "the child's tags");
        OrchestrationMetadata done = await Finished(parent, ct);
        Equal(26, done.ReadOutputAs<int>(), "parent output");
    }),

    ("two filtered workers", async ct =>
    {
        // Work only worker B can run waits for it: worker A, connected and busy, must not get it.
        string early = await client.ScheduleNewOrchestrationInstanceAsync("OnlyB", 0);
        string meanwhile = await client.ScheduleNewOrchestrationInstanceAsync("Chain", new[] { "Lisbon" });
        ExpectStatus(await Finished(meanwhile, ct), OrchestrationRuntimeStatus.Completed);
        Equal(OrchestrationRuntimeStatus.Pending, (await client.GetInstanceAsync(early, ct))?.RuntimeStatus,
            "work for worker B while only worker A is connected");

        using IHost hostB = BuildHost(address, withClient: false, RegisterOnlyB);
        await hostB.StartAsync(ct);
        try
        {
            var onlyB = new List<string> { early };
            var onlyA = new List<string>();
            for (int i = 1; i <= 20; i++)
            {
                onlyB.Add(await client.ScheduleNewOrchestrationInstanceAsync("OnlyB", i));
                onlyA.Add(await client.ScheduleNewOrchestrationInstanceAsync("Chain", new[] { $"City {i}" }));
            }

            for (int i = 0; i < onlyB.Count; i++)
            {
                OrchestrationMetadata done = await Finished(onlyB[i], ct);
                ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
                Equal($"B{i}", done.ReadOutputAs<string>(), $"OnlyB {i}");
            }

            for (int i = 0; i < onlyA.Count; i++)
            {
                OrchestrationMetadata done = await Finished(onlyA[i], ct);
                ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
                Equal($"Hello, City {i + 1}!", done.ReadOutputAs<List<string>>()?.SingleOrDefault(), $"Chain {i + 1}");
            }
        }
        finally
        {
            await hostB.StopAsync(CancellationToken.None);
        }
    }),

    ("entities: signal and read from the client", async ct =>
    {
        var counter = new EntityInstanceId("counter", $"{run}-client");
        for (int i = 0; i < 3; i++)
        {
            await client.Entities.SignalEntityAsync(counter, "add", 5, cancellation: ct);
        }

        EntityMetadata<int>? state = await Until(
            () => client.Entities.GetEntityAsync<int>(counter, cancellation: ct),
            m => m is not null && m.State == 15,
            ct);
        Equal(counter, state!.Id, "entity id");
        int found = 0;
        await foreach (EntityMetadata m in client.Entities.GetAllEntitiesAsync(
            new EntityQuery { InstanceIdStartsWith = $"@counter@{run}-client" }))
        {
            found++;
        }

        Equal(1, found, "entities found by prefix");
    }),

    ("entities: call and signal from an orchestration", async ct =>
    {
        string id = await client.ScheduleNewOrchestrationInstanceAsync("CounterOps", $"{run}-orchestration");
        OrchestrationMetadata done = await Finished(id, ct);
        ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
        Equal("10, failure caught: counter refused", done.ReadOutputAs<string>(), "output");
    }),

    ("entities: critical section over two accounts", async ct =>
    {
        string a = $"{run}-a";
        string b = $"{run}-b";
        string seed = await client.ScheduleNewOrchestrationInstanceAsync("Seed", new[] { a, b });
        ExpectStatus(await Finished(seed, ct), OrchestrationRuntimeStatus.Completed);
        var transfers = new List<(TransferRequest Request, string Id)>();
        for (int i = 0; i < 10; i++)
        {
            var request = i % 2 == 0 ? new TransferRequest(a, b, 30 + i) : new TransferRequest(b, a, 20 + i);
            transfers.Add((request, await client.ScheduleNewOrchestrationInstanceAsync("Transfer", request)));
        }

        int expectedA = 100;
        foreach ((TransferRequest request, string id) in transfers)
        {
            OrchestrationMetadata done = await Finished(id, ct);
            ExpectStatus(done, OrchestrationRuntimeStatus.Completed);
            if (done.ReadOutputAs<bool>())
            {
                expectedA += request.From == a ? -request.Amount : request.Amount;
            }
        }

        int balanceA = await Balance(a, ct);
        int balanceB = await Balance(b, ct);
        Equal(200, balanceA + balanceB, "total over both accounts");
        Equal(expectedA, balanceA, "account a after the transfers that went through");
        Expect(balanceA >= 0 && balanceB >= 0, $"balances {balanceA} and {balanceB}");
    }),
};

int passed = 0;
int failed = 0;
foreach ((string name, Func<CancellationToken, Task> body) in scenarios)
{
    using var cts = new CancellationTokenSource(scenarioTimeout);
    var clock = Stopwatch.StartNew();
    try
    {
        await body(cts.Token);
        passed++;
        Console.WriteLine($"PASS {name} ({clock.ElapsedMilliseconds} ms)");
    }
    catch (Exception e)
    {
        failed++;
        string why = cts.IsCancellationRequested
            ? $"timed out after {scenarioTimeout.TotalSeconds} s"
            : $"{e.GetType().Name}: {e.Message}".ReplaceLineEndings(" ");
        Console.WriteLine($"FAIL {name}: {why}");
    }
}

await hostA.StopAsync();
Console.WriteLine($"{passed} passed, {failed} failed");
return failed == 0 ? 0 : 1;

// ---------------------------------------------------------------------------------------------

Task<OrchestrationMetadata> Finished(string instanceId, CancellationToken ct)
    => client.WaitForInstanceCompletionAsync(instanceId, getInputsAndOutputs: true, ct);

async Task<int> Balance(string key, CancellationToken ct)
{
    EntityMetadata<int>? account = await client.Entities.GetEntityAsync<int>(new EntityInstanceId("account", key), cancellation: ct);
    Expect(account is not null, $"account {key} exists");
    return account!.State;
}

// Polls for a condition the SDK cannot wait on (a status, an entity's state), until the
// scenario's deadline.
static async Task<T> Until<T>(Func<Task<T>> probe, Func<T, bool> done, CancellationToken ct)
{
    while (true)
    {
        T value = await probe();
        if (done(value))
        {
            return value;
        }

        await Task.Delay(100, ct);
    }
}

static void Expect(bool condition, string what)
{
    if (!condition)
    {
        throw new ScenarioFailedException(what);
    }
}

static void Equal<T>(T expected, T actual, string what)
{
    if (!EqualityComparer<T>.Default.Equals(expected, actual))
    {
        throw new ScenarioFailedException($"{what}: expected {expected}, got {actual}");
    }
}

static void ExpectStatus(OrchestrationMetadata m, OrchestrationRuntimeStatus status)
{
    if (m.RuntimeStatus != status)
    {
        throw new ScenarioFailedException(
            $"{m.Name} {m.InstanceId} is {m.RuntimeStatus}, expected {status}; failure: {m.FailureDetails}");
    }
}

static IHost BuildHost(string address, bool withClient, Action<DurableTaskRegistry> register)
{
    HostApplicationBuilder builder = Host.CreateApplicationBuilder();
    // SDK warnings go to stderr, so stdout holds only the scenario lines.
    builder.Logging.ClearProviders();
    builder.Logging.AddConsole(options => options.LogToStandardErrorThreshold = LogLevel.Trace);
    builder.Logging.SetMinimumLevel(LogLevel.Warning);
    if (withClient)
    {
        builder.Services.AddDurableTaskClient(b =>
        {
            b.Configure(options => options.EnableEntitySupport = true);
            b.UseGrpc(address);
        });
    }

    builder.Services.AddDurableTaskWorker(b =>
    {
        b.Configure(options => options.EnableEntitySupport = true);
        b.AddTasks(register);
        b.UseWorkItemFilters();
        // Entity messages from orchestrations travel as the protocol's own entity actions.
        b.UseGrpc(options =>
        {
            options.Address = address;
            options.ConfigureForAzureManaged();
        });
    });
    return builder.Build();
}

static void RegisterMain(DurableTaskRegistry r)
{
    r.AddActivityFunc<string, string>("Hello", (context, city) => $"Hello, {city}!");
    r.AddActivityFunc<int, int>("Square", (context, x) => x * x);
    // A lambda that only throws fits both the synchronous and the Task overload; the typed
    // delegate picks one.
    Func<TaskActivityContext, string, string> fail = (context, message) => throw new InvalidOperationException(message);
    r.AddActivityFunc<string, string>("Fail", fail);

    r.AddOrchestratorFunc<string[], List<string>>("Chain", async (context, cities) =>
    {
        var greetings = new List<string>();
        foreach (string city in cities)
        {
            greetings.Add(await context.CallActivityAsync<string>("Hello", city));
        }

        return greetings;
    });

    r.AddOrchestratorFunc<int, int>("FanOut", async (context, n) =>
    {
        int[] squares = await Task.WhenAll(Enumerable.Range(1, n).Select(i => context.CallActivityAsync<int>("Square", i)));
        return squares.Sum();
    });

    r.AddOrchestratorFunc<int, int>("Child", async (context, x) =>
    {
        int square = await context.CallActivityAsync<int>("Square", x);
        return square + 1;
    });

    r.AddOrchestratorFunc<int, int>("Parent", async (context, n) =>
    {
        int[] results = await Task.WhenAll(Enumerable.Range(1, n).Select(i => context.CallSubOrchestratorAsync<int>("Child", i)));
        return results.Sum();
    });

    r.AddOrchestratorFunc<int, double>("Timer", async (context, seconds) =>
    {
        DateTime before = context.CurrentUtcDateTime;
        await context.CreateTimer(TimeSpan.FromSeconds(seconds), CancellationToken.None);
        return (context.CurrentUtcDateTime - before).TotalMilliseconds;
    });

    r.AddOrchestratorFunc<int, string>("Approval", async (context, timeoutSeconds) =>
    {
        try
        {
            string answer = await context.WaitForExternalEvent<string>("approval", TimeSpan.FromSeconds(timeoutSeconds));
            return "approved: " + answer;
        }
        catch (OperationCanceledException)
        {
            return "timed out";
        }
    });

    r.AddOrchestratorFunc<int, int>("CountUp", (context, n) =>
    {
        if (n < 5)
        {
            context.ContinueAsNew(n + 1);
        }

        return Task.FromResult(n);
    });

    r.AddOrchestratorFunc<string>("WaitForever", async context => await context.WaitForExternalEvent<string>("never"));

    r.AddOrchestratorFunc<string, string>("Caught", async (context, message) =>
    {
        try
        {
            await context.CallActivityAsync<string>("Fail", message);
            return "not thrown";
        }
        catch (TaskFailedException e)
        {
            return $"caught {e.FailureDetails.ErrorType}: {e.FailureDetails.ErrorMessage}";
        }
    });

    r.AddOrchestratorFunc<string, string>("Uncaught", async (context, message) =>
        await context.CallActivityAsync<string>("Fail", message));

    r.AddOrchestratorFunc<string>("Status", async context =>
    {
        context.SetCustomStatus("waiting");
        string go = await context.WaitForExternalEvent<string>("go");
        context.SetCustomStatus("done: " + go);
        return go;
    });

    r.AddOrchestratorFunc<DateTime>("WhenAmI", context => context.CurrentUtcDateTime);

    r.AddOrchestratorFunc<string, int>("LateParent", async (context, childId) =>
    {
        await context.CreateTimer(TimeSpan.FromSeconds(1), CancellationToken.None);
        var options = new SubOrchestrationOptions
        {
            InstanceId = childId,
            Tags = new Dictionary<string, string> { ["tag1"] = "value1" },
        };
        return await context.CallSubOrchestratorAsync<int>("Child", 5, options);
    });

    r.AddEntity<Counter>("counter");
    r.AddEntity<Account>("account");

    r.AddOrchestratorFunc<string, string>("CounterOps", async (context, key) =>
    {
        var counter = new EntityInstanceId("counter", key);
        await context.Entities.SignalEntityAsync(counter, "add", 7);
        await context.Entities.CallEntityAsync(counter, "add", 3);
        int value = await context.Entities.CallEntityAsync<int>(counter, "get");
        try
        {
            await context.Entities.CallEntityAsync(counter, "fail");
            return $"{value}, no failure";
        }
        catch (EntityOperationFailedException e)
        {
            return $"{value}, failure caught: {e.FailureDetails.ErrorMessage}";
        }
    });

    r.AddOrchestratorFunc<string[], bool>("Seed", async (context, keys) =>
    {
        foreach (string key in keys)
        {
            await context.Entities.CallEntityAsync(new EntityInstanceId("account", key), "deposit", 100);
        }

        return true;
    });

    r.AddOrchestratorFunc<TransferRequest, bool>("Transfer", async (context, transfer) =>
    {
        var from = new EntityInstanceId("account", transfer.From);
        var to = new EntityInstanceId("account", transfer.To);
        await using (await context.Entities.LockEntitiesAsync(from, to))
        {
            if (!context.Entities.InCriticalSection())
            {
                throw new InvalidOperationException("not in the critical section after locking");
            }

            int balance = await context.Entities.CallEntityAsync<int>(from, "get");
            if (balance < transfer.Amount)
            {
                return false;
            }

            await context.Entities.CallEntityAsync(from, "withdraw", transfer.Amount);
            await context.Entities.CallEntityAsync(to, "deposit", transfer.Amount);
            return true;
        }
    });
}

static void RegisterOnlyB(DurableTaskRegistry r)
{
    r.AddActivityFunc<int, string>("OnlyBActivity", (context, i) => $"B{i}");
    r.AddOrchestratorFunc<int, string>("OnlyB", async (context, i) => await context.CallActivityAsync<string>("OnlyBActivity", i));
}

/// <summary>The input of the "Transfer" orchestration.</summary>
record TransferRequest(string From, string To, int Amount);

/// <summary>A counter: "add", "get" and "fail" (which throws and leaves the state as it was).</summary>
sealed class Counter : TaskEntity<int>
{
    public void Add(int amount) => this.State += amount;

    public int Get() => this.State;

    public void Fail() => throw new InvalidOperationException("counter refused");
}

/// <summary>An account balance: "deposit", "withdraw" (never below zero) and "get".</summary>
sealed class Account : TaskEntity<int>
{
    public void Deposit(int amount) => this.State += amount;

    public void Withdraw(int amount)
    {
        if (amount > this.State)
        {
            throw new InvalidOperationException($"balance {this.State} is less than {amount}");
        }

        this.State -= amount;
    }

    public int Get() => this.State;
}

/// <summary>A scenario's expectation did not hold.</summary>
sealed class ScenarioFailedException(string message) : Exception(message);
