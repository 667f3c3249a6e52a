//! Transactional messages: an order is saved in the local database and its "order created"
//! message sent, both or neither. The half message is stored first; the local transaction
//! decides; a broker that hears nothing asks `check_local` later.
//!
//! Run against `ferromq standalone`: `cargo run -p ferromq-client --example transactional`.

use std::collections::HashSet;
use std::sync::Mutex;

use ferromq_client::{
    Client, Message, ReceivedMessage, SendReceipt, TransactionListener, TransactionState,
};
use futures::future::BoxFuture;

/// Stands in for the application's database.
#[derive(Default)]
struct Orders {
    saved: Mutex<HashSet<String>>,
}

impl TransactionListener for Orders {
    fn execute_local<'a>(
        &'a self,
        message: &'a Message,
        _receipt: &'a SendReceipt,
    ) -> BoxFuture<'a, TransactionState> {
        Box::pin(async move {
            let order = message.keys.first().cloned().unwrap_or_default();
            if order.ends_with("-bad") {
                return TransactionState::Rollback; // the insert failed: drop the message
            }
            if let Ok(mut saved) = self.saved.lock() {
                saved.insert(order);
            }
            TransactionState::Commit
        })
    }

    fn check_local<'a>(&'a self, message: &'a ReceivedMessage) -> BoxFuture<'a, TransactionState> {
        Box::pin(async move {
            let order = message.keys.first().cloned().unwrap_or_default();
            match self.saved.lock() {
                Ok(saved) if saved.contains(&order) => TransactionState::Commit,
                Ok(_) => TransactionState::Rollback,
                Err(_) => TransactionState::Unknown,
            }
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nameserver =
        std::env::var("FERROMQ_NAMESERVER").unwrap_or_else(|_| "127.0.0.1:9876".into());
    let client = Client::builder()
        .name_servers([nameserver])
        .connect()
        .await?;
    client.create_topic("orders", 4).await?;
    let producer = client
        .transaction_producer("order-service", Orders::default())
        .await?;
    for order in ["order-1", "order-2-bad"] {
        let message = Message::new("orders", format!("{order} created")).with_key(order);
        let (receipt, state) = producer
            .send_in_transaction(message)
            .await
            .map_err(|err| err.error)?;
        println!("{order}: {state:?} (message {})", receipt.message_id);
    }
    // Or drive it by hand.
    let open = producer
        .begin(Message::new("orders", "order-3 created").with_key("order-3"))
        .await
        .map_err(|err| err.error)?;
    open.commit().await?;
    println!("order-3: committed by hand");
    producer.shutdown();
    client.shutdown().await;
    Ok(())
}
