# signups/workflows.py: dagger_django imports the `workflows` module of every installed app
from dagger_django import DAGBuilderHelper, Dagger, ExecutorTask, Param


class CreateAccount(ExecutorTask):
    def execute(self, runtime_parameters, workflow_instance=None):
        email = runtime_parameters["email"]
        if "@" not in email:
            raise ValueError(f"not an email address: {email!r}")  # the workflow halts: FAILURE
        runtime_parameters["account_id"] = f"acct-{email.split('@')[0]}"


class SendWelcome(ExecutorTask):
    max_retries = 3  # a mail server that hiccups: retried with backoff before the task fails
    retry_backoff = 1.0

    def execute(self, runtime_parameters, workflow_instance=None):
        # Your mail client here; it runs at least once, so give it self.idempotency_key.
        runtime_parameters["welcome_sent_to"] = runtime_parameters["email"]


@Dagger.register_template("Signup")
def signup(template_name):
    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    tasks = helper.build_and_link_tasks(
        [
            helper.generic_executor_task_builder(task_type=CreateAccount, name="create_account"),
            helper.generic_executor_task_builder(task_type=SendWelcome, name="send_welcome"),
        ]
    )
    process = helper.generic_process_builder(process_name="signup", root_task=tasks)
    return helper.generic_template(
        template_name=template_name,
        root_process=process.build(),
        parameters=[Param("email", str)],
        allow_extra_parameters=True,  # the tasks add account_id and welcome_sent_to
    )
